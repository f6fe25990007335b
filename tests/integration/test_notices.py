"""Messages owed: sent after commit, retried with a growing delay, given up when the chat can't be
reached or after the last attempt, never sent again once recorded as sent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.messaging import RecipientUnreachable
from aisha.notices import NoticeRules, NoticeService, OwedMessage
from tests.conftest import Database


class ScriptedMessenger:
    """Answers send_text with the next scripted error (None: delivered) and records deliveries."""

    def __init__(self) -> None:
        self.script: list[Exception | None] = []
        self.delivered: list[tuple[int, str]] = []
        self.attempts = 0

    async def send_text(self, chat_id: int, text: str, **_: Any) -> int:
        self.attempts += 1
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error
        self.delivered.append((chat_id, text))
        return len(self.delivered)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def messenger() -> ScriptedMessenger:
    return ScriptedMessenger()


@pytest.fixture
def notices(db: Database, clock: FrozenClock, messenger: ScriptedMessenger) -> NoticeService:
    rules = NoticeRules(max_attempts=3, retry_base=timedelta(seconds=30), lease=timedelta(minutes=5))
    return NoticeService(sessions=db.sessions, clock=clock, messenger=messenger, rules=rules)  # type: ignore[arg-type]


async def _owe(db: Database, notices: NoticeService, key: str = "k", text: str = "hello") -> bool:
    async with unit_of_work(db.sessions) as session:
        return await notices.owe(session=session, key=key, chat_id=77, text=text)


async def _row(db: Database) -> OwedMessage:
    async with db.sessions() as session:
        row = await session.scalar(select(OwedMessage))
    assert row is not None
    return row


async def test_owed_once_per_key_and_sent_after_commit(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger
) -> None:
    assert await _owe(db, notices) is True
    assert await _owe(db, notices, text="other") is False
    assert messenger.delivered == [(77, "hello")]
    row = await _row(db)
    assert (row.attempts, row.sent_at is not None, row.given_up_at) == (1, True, None)
    assert await notices.sweep() == 0
    assert await notices.deliver(key="k") is False
    assert messenger.delivered == [(77, "hello")]


async def test_nothing_is_sent_when_the_owing_transaction_rolls_back(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger
) -> None:
    with pytest.raises(RuntimeError):
        async with unit_of_work(db.sessions) as session:
            await notices.owe(session=session, key="k", chat_id=77, text="hello")
            raise RuntimeError("the money move failed")
    assert messenger.attempts == 0
    assert await notices.sweep() == 0
    async with db.sessions() as session:
        assert (await session.scalars(select(OwedMessage))).all() == []


async def test_passing_failures_are_retried_with_a_growing_delay(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger, clock: FrozenClock
) -> None:
    messenger.script = [TimeoutError(), ConnectionResetError()]
    await _owe(db, notices)  # attempt 1 fails
    assert await notices.sweep() == 0  # not due before 30 s
    clock.advance(timedelta(seconds=29))
    assert await notices.sweep() == 0 and messenger.attempts == 1
    clock.advance(timedelta(seconds=1))
    assert await notices.sweep() == 0 and messenger.attempts == 2  # attempt 2 fails: 60 s now
    clock.advance(timedelta(seconds=59))
    assert await notices.sweep() == 0 and messenger.attempts == 2
    clock.advance(timedelta(seconds=1))
    assert await notices.sweep() == 1
    assert messenger.delivered == [(77, "hello")]
    row = await _row(db)
    assert (row.attempts, row.last_error, row.given_up_at) == (3, None, None)


async def test_given_up_after_the_last_attempt(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger, clock: FrozenClock
) -> None:
    messenger.script = [OSError("down")] * 3
    await _owe(db, notices)
    for _ in range(4):
        clock.advance(timedelta(hours=1))
        await notices.sweep()
    assert (messenger.attempts, messenger.delivered) == (3, [])
    row = await _row(db)
    assert row.given_up_at is not None and row.sent_at is None and "down" in (row.last_error or "")


async def test_an_unreachable_chat_is_given_up_at_once(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger, clock: FrozenClock
) -> None:
    messenger.script = [RecipientUnreachable("Forbidden: bot was blocked by the user")]
    await _owe(db, notices)
    clock.advance(timedelta(days=1))
    assert await notices.sweep() == 0
    assert messenger.attempts == 1
    row = await _row(db)
    assert row.given_up_at is not None and row.last_error == "Forbidden: bot was blocked by the user"


async def test_an_attempt_under_way_is_not_repeated_before_its_lease_ends(
    db: Database, notices: NoticeService, messenger: ScriptedMessenger, clock: FrozenClock
) -> None:
    """A process that died after claiming the notice: another sends it only when the lease is over."""
    async with unit_of_work(db.sessions) as session:
        session.add(
            OwedMessage(
                key="k",
                chat_id=77,
                text="hello",
                attempts=1,
                next_attempt_at=clock.now() + timedelta(minutes=5),
            )
        )
    assert await notices.sweep() == 0
    clock.advance(timedelta(minutes=5))
    assert await notices.sweep() == 1
    assert messenger.delivered == [(77, "hello")]
