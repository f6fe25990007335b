"""Many connections race holds, captures, releases and charges on ONE account (PostgreSQL).

Each operation is its own transaction on its own connection. Afterwards the balance was never
negative, equals the initial credits minus what was accepted, every hold resolved at most once,
and verify_all is clean.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import (
    EntryResult,
    HoldAlreadyResolved,
    HoldStatus,
    InsufficientCredits,
    LedgerService,
    ResolutionResult,
)
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold
from aisha.clock import SystemClock
from aisha.db.session import unit_of_work
from aisha.users.models import User
from tests.conftest import Database

pytestmark = pytest.mark.postgres

T = TypeVar("T")
USER = 777
INITIAL = 1_500
WORKERS = 24
ROUNDS = 12


async def tx(db: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with unit_of_work(db.sessions) as session:
        return await work(session)


@dataclass
class Book:
    """What the clients were told: the accepted operations, from the outside."""

    charged: int = 0
    holds: dict[uuid.UUID, int] = field(default_factory=dict)
    resolutions: dict[uuid.UUID, list[ResolutionResult]] = field(default_factory=dict)
    refused: int = 0
    lost_races: int = 0
    replays: int = 0
    lowest_seen: int = INITIAL
    done: bool = False


@pytest.fixture
def ledger() -> LedgerService:
    return LedgerService(clock=SystemClock(), hold_ttl=timedelta(hours=1))


async def _setup(db: Database, ledger: LedgerService) -> None:
    async def work(session: AsyncSession) -> None:
        session.add(User(telegram_id=USER, language="en"))
        await session.flush()
        await ledger.credit(session=session, user_id=USER, amount=INITIAL, key="initial")

    await tx(db, work)


async def _worker(db: Database, ledger: LedgerService, book: Book, n: int) -> None:
    rng = random.Random(n)
    done: list[tuple[Callable[[AsyncSession], Awaitable[Any]], Any]] = []
    for r in range(ROUNDS):
        key = f"w{n}:r{r}"
        choice = rng.random()
        try:
            if choice < 0.35:
                amount = rng.randint(5, 60)
                op: Callable[[AsyncSession], Awaitable[Any]] = lambda s, a=amount, k=key: ledger.hold(  # noqa: E731
                    session=s, user_id=USER, amount=a, key=k, reference=f"job:{k}"
                )
                result = await tx(db, op)
                book.holds[result.hold_id] = amount
            elif choice < 0.55:
                amount = rng.randint(1, 40)
                op = lambda s, a=amount, k=key: ledger.charge(session=s, user_id=USER, amount=a, key=k)  # noqa: E731
                result = await tx(db, op)
                book.charged += amount
            elif choice < 0.9 and book.holds:
                hold_id = rng.choice(list(book.holds))
                if rng.random() < 0.6:
                    spend = rng.randint(0, book.holds[hold_id])
                    op = lambda s, h=hold_id, a=spend, k=key: ledger.capture(  # noqa: E731
                        session=s, hold_id=h, amount=a, key=k
                    )
                else:
                    op = lambda s, h=hold_id, k=key: ledger.release(session=s, hold_id=h, key=k)  # noqa: E731
                result = await tx(db, op)
                book.resolutions.setdefault(hold_id, []).append(result)
            elif done:
                # A retried delivery: the same key again must change nothing.
                op, first = rng.choice(done)
                again = await tx(db, op)
                assert again.replayed is True
                assert _same_result(again, first)
                book.replays += 1
                continue
            else:
                continue
            assert result.replayed is False
            done.append((op, result))
        except InsufficientCredits:
            book.refused += 1
        except HoldAlreadyResolved:
            book.lost_races += 1


def _same_result(again: Any, first: Any) -> bool:
    fields = ("balance", "amount", "hold_id", "entry_id", "captured", "returned")
    return all(getattr(again, f, None) == getattr(first, f, None) for f in fields)


async def _monitor(db: Database, ledger: LedgerService, book: Book) -> None:
    while not book.done:
        balance = await tx(db, lambda s: ledger.get_balance(session=s, user_id=USER))
        book.lowest_seen = min(book.lowest_seen, balance)
        await asyncio.sleep(0.002)


async def _check_books(db: Database, ledger: LedgerService, book: Book) -> None:
    async def read(session: AsyncSession) -> tuple[int, dict[uuid.UUID, tuple[HoldStatus, int]]]:
        balance = await ledger.get_balance(session=session, user_id=USER)
        rows = await session.execute(select(CreditHold.id, CreditHold.status, CreditHold.captured_amount))
        return balance, {row.id: (row.status, row.captured_amount) for row in rows}

    balance, holds = await tx(db, read)
    assert set(holds) == set(book.holds)
    returned = 0
    for hold_id, amount in book.holds.items():
        wins = book.resolutions.get(hold_id, [])
        assert len(wins) <= 1, f"hold {hold_id} resolved {len(wins)} times"
        if wins:
            win = wins[0]
            assert holds[hold_id] == (win.status, win.captured)
            assert win.captured + win.returned == amount
            returned += win.returned
        else:
            assert holds[hold_id] == (HoldStatus.ACTIVE, 0)
    assert balance >= 0
    # Initial minus what was accepted: charges, and holds minus what their resolution returned.
    assert balance == INITIAL - book.charged - sum(book.holds.values()) + returned
    assert await tx(db, lambda s: ledger.verify_all(session=s)) == []

    async def numbers(session: AsyncSession) -> tuple[list[int], int | None]:
        seqs = await session.scalars(select(CreditEntry.seq).where(CreditEntry.user_id == USER))
        last = await session.scalar(select(CreditAccount.last_seq).where(CreditAccount.user_id == USER))
        return sorted(seqs), last

    # Every applied operation took the next number under the row lock: 1..n, no gap, no repeat
    # (refused and rolled-back operations took none).
    seqs, last = await tx(db, numbers)
    assert seqs == list(range(1, len(seqs) + 1))
    assert last == len(seqs)


async def test_many_connections_race_on_one_account(postgres_db: Database, ledger: LedgerService) -> None:
    db = postgres_db
    await _setup(db, ledger)
    book = Book()
    monitor = asyncio.create_task(_monitor(db, ledger, book))
    await asyncio.gather(*(_worker(db, ledger, book, n) for n in range(WORKERS)))
    book.done = True
    await monitor

    # The race really happened: some were refused, some lost a hold to another resolver.
    assert book.refused > 0
    assert book.lost_races > 0
    assert book.replays > 0
    assert len(book.holds) > 10
    assert book.lowest_seen >= 0
    await _check_books(db, ledger, book)

    # Now every remaining hold is fought over by three transactions at once: a capture, the same
    # capture retried with its key, and a release with another key. Exactly one resolution each.
    open_holds = [h for h in book.holds if h not in book.resolutions]
    attempts: list[Awaitable[ResolutionResult]] = []
    for hold_id in open_holds:
        spend = book.holds[hold_id] // 2
        attempts += [
            tx(
                db,
                lambda s, h=hold_id, a=spend: ledger.capture(session=s, hold_id=h, amount=a, key=f"{h}:cap"),
            ),
            tx(
                db,
                lambda s, h=hold_id, a=spend: ledger.capture(session=s, hold_id=h, amount=a, key=f"{h}:cap"),
            ),
            tx(db, lambda s, h=hold_id: ledger.release(session=s, hold_id=h, key=f"{h}:rel")),
        ]
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    for index, hold_id in enumerate(open_holds):
        cap, cap_again, rel = outcomes[3 * index : 3 * index + 3]
        firsts = [o for o in (cap, cap_again, rel) if isinstance(o, ResolutionResult) and not o.replayed]
        assert len(firsts) == 1, (cap, cap_again, rel)
        book.resolutions[hold_id] = firsts
        if isinstance(rel, ResolutionResult):  # the release won: both captures were refused
            assert isinstance(cap, HoldAlreadyResolved) and isinstance(cap_again, HoldAlreadyResolved)
        else:  # a capture won: the other capture replays it, the release is refused
            assert isinstance(rel, HoldAlreadyResolved)
            assert isinstance(cap, ResolutionResult) and isinstance(cap_again, ResolutionResult)
            assert {cap.replayed, cap_again.replayed} == {True, False}
            assert cap.entry_id == cap_again.entry_id
    await _check_books(db, ledger, book)
    assert await tx(db, lambda s: ledger.held_total(session=s, user_id=USER)) == 0


async def test_one_key_from_many_connections_applies_once(
    postgres_db: Database, ledger: LedgerService
) -> None:
    db = postgres_db
    await _setup(db, ledger)
    charges: list[EntryResult] = await asyncio.gather(
        *(
            tx(db, lambda s: ledger.charge(session=s, user_id=USER, amount=INITIAL, key="gen:1:charge"))
            for _ in range(WORKERS)
        )
    )
    assert sorted(c.replayed for c in charges) == [False] + [True] * (WORKERS - 1)
    assert {c.entry_id for c in charges} == {charges[0].entry_id}
    assert {c.balance for c in charges} == {0}

    await tx(db, lambda s: ledger.credit(session=s, user_id=USER, amount=100, key="more"))
    holds = await asyncio.gather(
        *(
            tx(
                db,
                lambda s: ledger.hold(session=s, user_id=USER, amount=60, key="gen:2:hold", reference="g2"),
            )
            for _ in range(WORKERS)
        )
    )
    assert sorted(h.replayed for h in holds) == [False] + [True] * (WORKERS - 1)
    assert len({h.hold_id for h in holds}) == 1
    assert await tx(db, lambda s: ledger.get_balance(session=s, user_id=USER)) == 40
    assert await tx(db, lambda s: ledger.verify_all(session=s)) == []
