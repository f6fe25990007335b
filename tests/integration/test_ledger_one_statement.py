"""The ledger's one-statement operations on PostgreSQL (billing/pg.py) under the races they must
survive: each operation its own transaction on its own connection, checked by the stored rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import (
    HoldAlreadyResolved,
    HoldStatus,
    IdempotencyConflict,
    InsufficientCredits,
    LedgerService,
)
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold
from aisha.clock import FrozenClock
from aisha.db.session import uncommitted_writes, unit_of_work
from aisha.users.models import User
from tests.conftest import Database, waits_for_a_lock

pytestmark = pytest.mark.postgres

T = TypeVar("T")
USER = 4242
CONNECTIONS = 12


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def ledger(clock: FrozenClock) -> LedgerService:
    return LedgerService(clock=clock, hold_ttl=timedelta(hours=1))


@pytest.fixture
async def db(postgres_db: Database, ledger: LedgerService) -> Database:
    async with unit_of_work(postgres_db.sessions) as session:
        session.add(User(telegram_id=USER, language="en"))
    return postgres_db


async def tx(db: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with unit_of_work(db.sessions) as session:
        return await work(session)


async def outcome(db: Database, work: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
    """The result, or the ledger error it raised."""
    try:
        return await tx(db, work)
    except (HoldAlreadyResolved, InsufficientCredits, IdempotencyConflict) as error:
        return error


async def stored(db: Database) -> tuple[int, list[tuple[str, int, int, int]], dict[uuid.UUID, Any]]:
    """The balance, the entries (kind, amount, balance_after, seq) in order, the holds."""

    async def work(
        session: AsyncSession,
    ) -> tuple[int, list[tuple[str, int, int, int]], dict[uuid.UUID, Any]]:
        balance = await session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == USER))
        rows = await session.execute(
            select(CreditEntry.kind, CreditEntry.amount, CreditEntry.balance_after, CreditEntry.seq)
            .where(CreditEntry.user_id == USER)
            .order_by(CreditEntry.seq)
        )
        holds = await session.execute(select(CreditHold.id, CreditHold.status, CreditHold.captured_amount))
        return (
            int(balance or 0),
            [(row.kind.value, row.amount, row.balance_after, row.seq) for row in rows],
            {row.id: (row.status, row.captured_amount) for row in holds},
        )

    return await tx(db, work)


async def assert_books_clean(db: Database, ledger: LedgerService) -> None:
    balance, entries, _ = await stored(db)
    assert [e[3] for e in entries] == list(range(1, len(entries) + 1))  # seq 1..n, no gap
    assert balance == sum(e[1] for e in entries) == entries[-1][2]
    assert await tx(db, lambda s: ledger.verify_all(session=s)) == []


async def test_a_hold_and_its_capture_are_one_statement_each(db: Database, ledger: LedgerService) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=100, key="fund"))
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:

        async def work(session: AsyncSession) -> None:
            held = await ledger.hold(session=session, user_id=USER, amount=30, key="h", reference="job:1")
            await ledger.capture(session=session, hold_id=held.hold_id, amount=20, key="c")

        await tx(db, work)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert len(statements) == 2
    assert not any("SAVEPOINT" in s for s in statements)
    balance, entries, _ = await stored(db)
    assert balance == 80
    assert entries == [("topup", 100, 100, 1), ("hold", -30, 70, 2), ("capture", 10, 80, 3)]


async def test_a_written_operation_counts_as_an_open_write(db: Database, ledger: LedgerService) -> None:
    async with unit_of_work(db.sessions) as session:
        assert not uncommitted_writes()
        await ledger.credit(session=session, user_id=USER, amount=5, key="fund")
        # The rule "no outside call while a transaction with writes is open" must see it.
        assert uncommitted_writes()
    assert not uncommitted_writes()


async def test_concurrent_capture_and_release_of_one_hold(db: Database, ledger: LedgerService) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=10_000, key="fund"))
    holds = [
        await tx(
            db, lambda s, n=n: ledger.hold(session=s, user_id=USER, amount=50, key=f"h{n}", reference="j")
        )
        for n in range(8)
    ]
    captured = 0
    for n, held in enumerate(holds):
        results = await asyncio.gather(
            *(
                outcome(
                    db, lambda s, h=held.hold_id, k=k: ledger.capture(session=s, hold_id=h, amount=20, key=k)
                )
                for k in (f"c{n}a", f"c{n}b")
            ),
            *(
                outcome(db, lambda s, h=held.hold_id, k=k: ledger.release(session=s, hold_id=h, key=k))
                for k in (f"r{n}a", f"r{n}b")
            ),
        )
        winners = [r for r in results if not isinstance(r, Exception)]
        assert len(winners) == 1, results
        assert all(isinstance(r, HoldAlreadyResolved) for r in results if r is not winners[0])
        captured += winners[0].captured
    balance, entries, stored_holds = await stored(db)
    assert balance == 10_000 - captured
    # One hold entry and exactly one resolution entry per hold.
    assert len(entries) == 1 + 2 * len(holds)
    assert all(status is not HoldStatus.ACTIVE for status, _ in stored_holds.values())
    await assert_books_clean(db, ledger)


async def test_one_key_replayed_under_concurrency_moves_money_once(
    db: Database, ledger: LedgerService
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=1_000, key="fund"))
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=USER, amount=300, key="h", reference="j"))
    captures = await asyncio.gather(
        *(
            tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=120, key="cap"))
            for _ in range(CONNECTIONS)
        )
    )
    assert sorted(c.replayed for c in captures) == [False] + [True] * (CONNECTIONS - 1)
    assert {(c.entry_id, c.captured, c.returned, c.balance) for c in captures} == {
        (captures[0].entry_id, 120, 180, 880)
    }
    credits = await asyncio.gather(
        *(
            tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=7, key="topup:1"))
            for _ in range(CONNECTIONS)
        )
    )
    assert {(c.entry_id, c.balance) for c in credits} == {(credits[0].entry_id, 887)}
    balance, entries, _ = await stored(db)
    assert balance == 887
    assert [e[0] for e in entries] == ["topup", "hold", "capture", "topup"]
    await assert_books_clean(db, ledger)


async def test_insufficient_balance_leaves_no_entry_under_concurrency(
    db: Database, ledger: LedgerService
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=100, key="fund"))
    results = await asyncio.gather(
        *(
            outcome(
                db,
                lambda s, n=n: (
                    ledger.hold(session=s, user_id=USER, amount=30, key=f"h{n}", reference="j")
                    if n % 2
                    else ledger.charge(session=s, user_id=USER, amount=30, key=f"c{n}")
                ),
            )
            for n in range(CONNECTIONS)
        )
    )
    accepted = [r for r in results if not isinstance(r, Exception)]
    assert len(accepted) == 3  # 3 × 30 of 100
    assert all(isinstance(r, InsufficientCredits) for r in results if r not in accepted)
    balance, entries, holds = await stored(db)
    assert balance == 10
    assert len(entries) == 1 + 3
    assert len(holds) == sum(1 for e in entries if e[0] == "hold")
    await assert_books_clean(db, ledger)


async def test_insufficient_balance_keeps_the_callers_other_work(db: Database, ledger: LedgerService) -> None:
    async def work(session: AsyncSession) -> None:
        await ledger.credit(session=session, user_id=USER, amount=10, key="fund")
        with pytest.raises(InsufficientCredits):
            await ledger.hold(session=session, user_id=USER, amount=11, key="h", reference="j")
        await ledger.charge(session=session, user_id=USER, amount=4, key="c")

    await tx(db, work)
    balance, entries, holds = await stored(db)
    assert (balance, [e[0] for e in entries], holds) == (6, ["topup", "charge"], {})


async def test_a_key_taken_by_another_operation_while_waiting_writes_nothing(
    db: Database, ledger: LedgerService
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=100, key="fund"))
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=USER, amount=40, key="h", reference="j"))
    async with unit_of_work(db.sessions) as first:
        await ledger.charge(session=first, user_id=USER, amount=5, key="shared")
        # Waits for the account lock, then finds the key used by the charge: no capture, no
        # change to the hold, no second movement.
        capture = asyncio.create_task(
            outcome(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=10, key="shared"))
        )
        assert await waits_for_a_lock(db, capture)
    assert isinstance(await capture, IdempotencyConflict)
    balance, entries, holds = await stored(db)
    assert balance == 55
    assert [e[0] for e in entries] == ["topup", "hold", "charge"]
    assert holds[held.hold_id] == (HoldStatus.ACTIVE, 0)
    await assert_books_clean(db, ledger)


async def test_expiry_racing_captures_resolves_each_hold_once(
    db: Database, ledger: LedgerService, clock: FrozenClock
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=1_000, key="fund"))
    holds = [
        await tx(
            db, lambda s, n=n: ledger.hold(session=s, user_id=USER, amount=10, key=f"h{n}", reference="j")
        )
        for n in range(10)
    ]
    clock.advance(timedelta(hours=2))
    results = await asyncio.gather(
        tx(db, lambda s: ledger.expire_holds(session=s)),
        *(
            outcome(
                db, lambda s, h=h.hold_id, n=n: ledger.capture(session=s, hold_id=h, amount=10, key=f"c{n}")
            )
            for n, h in enumerate(holds)
        ),
    )
    expired, captures = results[0], results[1:]
    won_by_capture = {c.hold_id for c in captures if not isinstance(c, Exception)}
    assert {e.hold_id for e in expired} | won_by_capture == {h.hold_id for h in holds}
    assert not {e.hold_id for e in expired} & won_by_capture
    balance, entries, _ = await stored(db)
    assert balance == 1_000 - 10 * len(won_by_capture)
    assert len(entries) == 1 + 2 * len(holds)
    await assert_books_clean(db, ledger)


async def test_capture_over_the_held_amount_is_refused_and_writes_nothing(
    db: Database, ledger: LedgerService
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=100, key="fund"))
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=USER, amount=40, key="h", reference="j"))
    with pytest.raises(Exception, match="between 0 and the held 40"):
        await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=41, key="c"))
    async with unit_of_work(db.sessions) as session:
        entries = await session.scalar(select(func.count()).select_from(CreditEntry))
    assert entries == 2
    balance, _, holds = await stored(db)
    assert (balance, holds[held.hold_id]) == (60, (HoldStatus.ACTIVE, 0))
