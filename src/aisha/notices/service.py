"""Messages owed: a notice that must reach someone once, whatever happens to the send.

`owe()` writes the notice in the caller's transaction, next to the money move it tells about; once
that transaction commits, one send is attempted. A send that fails for a passing reason (a 5xx, a
timeout, a reset connection) is retried by the recovery sweep with a growing delay, up to a limit;
a chat that can't be reached (the user blocked the bot) is given up at once. A notice recorded as
sent is never sent again. A crash between the send and recording it may send it a second time:
at least once, never lost.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import structlog
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.clock import Clock
from aisha.db.session import after_commit, unit_of_work
from aisha.db.upsert import insert_ignore
from aisha.messaging import Messenger, RecipientUnreachable
from aisha.notices.models import MAX_KEY_LENGTH, OwedMessage

log = structlog.get_logger(__name__)
SWEEP_BATCH = 100


@dataclass(frozen=True, slots=True)
class NoticeRules:
    max_attempts: int = 8
    retry_base: timedelta = timedelta(seconds=30)  # then doubled after every failure
    retry_cap: timedelta = timedelta(hours=1)
    # How long one attempt holds the notice: longer than any send can take.
    lease: timedelta = timedelta(minutes=5)


def notice_key(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"


class NoticeService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        messenger: Messenger | None,
        rules: NoticeRules | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._messenger = messenger
        self._rules = rules or NoticeRules()

    async def owe(self, *, session: AsyncSession, key: str, chat_id: int, text: str) -> bool:
        """Owe `text` to `chat_id`, once per `key`, in the caller's transaction; one send is tried
        after it commits. True when this call owed it (False: owed before)."""
        key = notice_key(key)
        now = self._clock.now()
        inserted = await insert_ignore(
            session,
            cast(Table, OwedMessage.__table__),
            {
                "id": uuid.uuid4(),
                "key": key,
                "chat_id": chat_id,
                "text": text,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
            conflict_columns=["key"],
        )
        if inserted:
            after_commit(session, lambda: self._deliver_quietly(key))
        return inserted

    async def deliver(self, *, key: str) -> bool:
        """One send attempt, if the notice is due and not already under way; True if sent."""
        if self._messenger is None:
            return False
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            claimed = (
                await session.execute(
                    update(OwedMessage)
                    .where(
                        OwedMessage.key == key,
                        OwedMessage.sent_at.is_(None),
                        OwedMessage.given_up_at.is_(None),
                        OwedMessage.next_attempt_at <= now,
                    )
                    .values(attempts=OwedMessage.attempts + 1, next_attempt_at=now + self._rules.lease)
                    .returning(OwedMessage.id, OwedMessage.chat_id, OwedMessage.text, OwedMessage.attempts)
                    .execution_options(synchronize_session=False)
                )
            ).first()
        if claimed is None:
            return False
        # Committed: the send happens outside any transaction.
        try:
            await self._messenger.send_text(claimed.chat_id, claimed.text)
        except RecipientUnreachable as error:
            log.info("notice.unreachable", key=key, chat_id=claimed.chat_id)
            await self._record(claimed.id, given_up=True, error=str(error))
            return False
        except Exception as error:
            give_up = claimed.attempts >= self._rules.max_attempts
            log.warning(
                "notice.send_failed", key=key, attempts=claimed.attempts, error=repr(error), given_up=give_up
            )
            await self._record(claimed.id, given_up=give_up, error=repr(error), attempts=claimed.attempts)
            return False
        await self._record(claimed.id, sent=True)
        return True

    async def sweep(self) -> int:
        """The recovery check: one attempt for every notice that is due; returns how many were sent."""
        now = self._clock.now()
        async with self._sessions() as session:
            keys = (
                await session.scalars(
                    select(OwedMessage.key)
                    .where(
                        OwedMessage.sent_at.is_(None),
                        OwedMessage.given_up_at.is_(None),
                        OwedMessage.next_attempt_at <= now,
                    )
                    .order_by(OwedMessage.next_attempt_at)
                    .limit(SWEEP_BATCH)
                )
            ).all()
        sent = 0
        for key in keys:
            sent += await self.deliver(key=key)
        return sent

    # --- internals -----------------------------------------------------------------------------

    async def _deliver_quietly(self, key: str) -> None:
        # Runs after the owing transaction committed: a failure here must not reach the caller,
        # whose work is done; the sweep tries again.
        try:
            await self.deliver(key=key)
        except Exception:
            log.exception("notice.deliver_failed", key=key)

    async def _record(
        self,
        notice_id: uuid.UUID,
        *,
        sent: bool = False,
        given_up: bool = False,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        now = self._clock.now()
        values: dict[str, object] = {"last_error": error[:200] if error else None}
        if sent:
            values["sent_at"] = now
        elif given_up:
            values["given_up_at"] = now
        else:
            delay = min(self._rules.retry_base * 2 ** max(attempts - 1, 0), self._rules.retry_cap)
            values["next_attempt_at"] = now + delay
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(OwedMessage)
                .where(OwedMessage.id == notice_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
