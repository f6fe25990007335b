"""The credit ledger and Stars payments, on SQLite and PostgreSQL: balances, rows and entries."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import (
    AlreadyRefunded,
    EntryKind,
    HoldAlreadyResolved,
    HoldNotFound,
    HoldStatus,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    LedgerService,
    PaymentNotFound,
    PaymentService,
    PaymentStatus,
    PriceList,
    StarPackage,
)
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, Payment
from aisha.billing.statement import OperationState, account_view
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.users.models import User
from tests.conftest import Database, waits_for_a_lock

T = TypeVar("T")
TTL = timedelta(hours=1)
ALICE, BOB = 1001, 1002


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def ledger(clock: FrozenClock) -> LedgerService:
    return LedgerService(clock=clock, hold_ttl=TTL)


@pytest.fixture
def payments(ledger: LedgerService) -> PaymentService:
    return PaymentService(ledger=ledger, prices=PriceList())


async def tx(db: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """One unit of work, committed."""
    async with unit_of_work(db.sessions) as session:
        return await work(session)


async def add_user(db: Database, user_id: int, *, blocked: bool = False) -> None:
    async def work(session: AsyncSession) -> None:
        session.add(User(telegram_id=user_id, language="en", is_blocked=blocked))

    await tx(db, work)


async def fund(db: Database, ledger: LedgerService, user_id: int, amount: int) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=user_id, amount=amount, key=f"fund:{user_id}"))


async def balance_row(db: Database, user_id: int) -> int | None:
    return await tx(
        db, lambda s: s.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == user_id))
    )


async def entries(db: Database, user_id: int) -> list[tuple[EntryKind, int, int, str]]:
    """(kind, amount, balance_after, key) in the order they were written."""

    async def work(session: AsyncSession) -> list[tuple[EntryKind, int, int, str]]:
        rows = await session.execute(
            select(
                CreditEntry.kind, CreditEntry.amount, CreditEntry.balance_after, CreditEntry.idempotency_key
            )
            .where(CreditEntry.user_id == user_id)
            .order_by(CreditEntry.seq)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]

    return await tx(db, work)


async def count(db: Database, model: Any) -> int:
    return await tx(db, lambda s: s.scalar(select(func.count()).select_from(model)))  # type: ignore[arg-type,return-value]


async def hold_row(db: Database, hold_id: uuid.UUID) -> tuple[HoldStatus, int, Any]:
    async def work(session: AsyncSession) -> tuple[HoldStatus, int, Any]:
        row = (
            await session.execute(
                select(CreditHold.status, CreditHold.captured_amount, CreditHold.expires_at).where(
                    CreditHold.id == hold_id
                )
            )
        ).one()
        return row.status, row.captured_amount, row.expires_at

    return await tx(db, work)


async def verify(db: Database, ledger: LedgerService) -> list[Any]:
    return await tx(db, lambda s: ledger.verify_all(session=s))


@pytest.fixture
async def alice(db: Database) -> int:
    await add_user(db, ALICE)
    await add_user(db, BOB)
    return ALICE


# --- credits and charges -----------------------------------------------------------------------


async def test_credit_then_charge(db: Database, ledger: LedgerService, alice: int) -> None:
    first = await tx(db, lambda s: ledger.credit(session=s, user_id=alice, amount=100, key="payment:1"))
    assert (first.balance, first.amount, first.replayed) == (100, 100, False)
    charged = await tx(
        db,
        lambda s: ledger.charge(
            session=s,
            user_id=alice,
            amount=30,
            key="p2p:1",
            description="ledger.photo_to_prompt",
            description_args={"n": 1},
        ),
    )
    assert (charged.balance, charged.amount) == (70, -30)
    assert await balance_row(db, alice) == 70
    assert await entries(db, alice) == [
        (EntryKind.TOPUP, 100, 100, "payment:1"),
        (EntryKind.CHARGE, -30, 70, "p2p:1"),
    ]
    page = await tx(db, lambda s: ledger.history(session=s, user_id=alice))
    assert page.total == 2
    assert [(i.kind, i.amount, i.description) for i in page.items] == [
        (EntryKind.CHARGE, -30, "ledger.photo_to_prompt"),
        (EntryKind.TOPUP, 100, "ledger.topup"),
    ]
    assert page.items[0].description_args == {"n": 1}
    assert await verify(db, ledger) == []


async def test_account_is_created_lazily_once(db: Database, ledger: LedgerService, alice: int) -> None:
    assert await balance_row(db, alice) is None
    assert await tx(db, lambda s: ledger.get_balance(session=s, user_id=alice)) == 0
    await tx(db, lambda s: ledger.ensure_account(session=s, user_id=alice))
    await tx(db, lambda s: ledger.ensure_account(session=s, user_id=alice))
    assert await balance_row(db, alice) == 0
    assert await count(db, CreditAccount) == 1


async def test_charge_without_credits_writes_nothing(db: Database, ledger: LedgerService, alice: int) -> None:
    with pytest.raises(InsufficientCredits) as no_account:
        await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=5, key="c:0"))
    assert (no_account.value.balance, no_account.value.required, no_account.value.shortfall) == (0, 5, 5)

    await fund(db, ledger, alice, 10)
    with pytest.raises(InsufficientCredits) as short:
        await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=11, key="c:1"))
    assert (short.value.balance, short.value.required, short.value.shortfall) == (10, 11, 1)
    assert await balance_row(db, alice) == 10
    assert await count(db, CreditEntry) == 1
    # The refused key was not consumed: the same key works once there is enough.
    assert (
        await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=10, key="c:1"))
    ).balance == 0


async def test_refusal_leaves_the_callers_other_work_in_place(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    await fund(db, ledger, alice, 10)

    async def work(session: AsyncSession) -> None:
        await ledger.charge(session=session, user_id=alice, amount=4, key="c:ok")
        with pytest.raises(InsufficientCredits):
            await ledger.hold(session=session, user_id=alice, amount=7, key="h:big", reference="gen:1")
        await ledger.hold(session=session, user_id=alice, amount=6, key="h:ok", reference="gen:2")

    await tx(db, work)
    assert await balance_row(db, alice) == 0
    assert [e[3] for e in await entries(db, alice)] == ["fund:1001", "c:ok", "h:ok"]
    assert await count(db, CreditHold) == 1


async def test_rolled_back_unit_of_work_leaves_nothing(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    await fund(db, ledger, alice, 10)

    class Boom(Exception):
        pass

    async def work(session: AsyncSession) -> None:
        await ledger.charge(session=session, user_id=alice, amount=4, key="c:1")
        await ledger.hold(session=session, user_id=alice, amount=2, key="h:1", reference="gen:1")
        raise Boom

    with pytest.raises(Boom):
        await tx(db, work)
    assert await balance_row(db, alice) == 10
    assert await count(db, CreditEntry) == 1
    assert await count(db, CreditHold) == 0


async def test_adjustments(db: Database, ledger: LedgerService, alice: int) -> None:
    up = await tx(db, lambda s: ledger.adjust(session=s, user_id=alice, amount=15, key="adm:1"))
    down = await tx(db, lambda s: ledger.adjust(session=s, user_id=alice, amount=-5, key="adm:2"))
    assert (up.balance, down.balance) == (15, 10)
    with pytest.raises(InsufficientCredits):
        await tx(db, lambda s: ledger.adjust(session=s, user_id=alice, amount=-11, key="adm:3"))
    with pytest.raises(InvalidAmount):
        await tx(db, lambda s: ledger.adjust(session=s, user_id=alice, amount=0, key="adm:4"))
    assert await entries(db, alice) == [
        (EntryKind.ADJUSTMENT, 15, 15, "adm:1"),
        (EntryKind.ADJUSTMENT, -5, 10, "adm:2"),
    ]


@pytest.mark.parametrize("amount", [0, -1])
async def test_non_positive_amounts_are_refused(
    db: Database, ledger: LedgerService, alice: int, amount: int
) -> None:
    with pytest.raises(InvalidAmount):
        await tx(db, lambda s: ledger.credit(session=s, user_id=alice, amount=amount, key="k"))
    with pytest.raises(InvalidAmount):
        await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=amount, key="k", reference="r"))
    assert await count(db, CreditEntry) == 0


# --- idempotency -------------------------------------------------------------------------------


async def test_same_key_returns_the_first_result(db: Database, ledger: LedgerService, alice: int) -> None:
    first = await tx(db, lambda s: ledger.credit(session=s, user_id=alice, amount=50, key="payment:x"))
    await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=20, key="c:1"))
    again = await tx(db, lambda s: ledger.credit(session=s, user_id=alice, amount=50, key="payment:x"))
    assert again.replayed is True
    assert (again.entry_id, again.balance, again.amount) == (first.entry_id, 50, 50)
    assert await balance_row(db, alice) == 30
    assert await count(db, CreditEntry) == 2

    charge_again = await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=20, key="c:1"))
    assert (charge_again.replayed, charge_again.balance) == (True, 30)

    hold = await tx(
        db, lambda s: ledger.hold(session=s, user_id=alice, amount=10, key="gen:1:hold", reference="g")
    )
    hold_again = await tx(
        db, lambda s: ledger.hold(session=s, user_id=alice, amount=10, key="gen:1:hold", reference="g")
    )
    assert (hold_again.hold_id, hold_again.balance, hold_again.replayed) == (hold.hold_id, 20, True)
    assert await count(db, CreditHold) == 1
    assert await balance_row(db, alice) == 20


async def test_same_key_for_something_else_is_a_conflict(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    await tx(db, lambda s: ledger.credit(session=s, user_id=alice, amount=50, key="k:1"))
    attempts: list[Callable[[AsyncSession], Awaitable[Any]]] = [
        lambda s: ledger.credit(session=s, user_id=alice, amount=51, key="k:1"),
        lambda s: ledger.credit(session=s, user_id=BOB, amount=50, key="k:1"),
        lambda s: ledger.credit(session=s, user_id=alice, amount=50, key="k:1", kind=EntryKind.BONUS),
        lambda s: ledger.charge(session=s, user_id=alice, amount=50, key="k:1"),
        lambda s: ledger.hold(session=s, user_id=alice, amount=50, key="k:1", reference="r"),
    ]
    for attempt in attempts:
        with pytest.raises(IdempotencyConflict):
            await tx(db, attempt)
    assert await balance_row(db, alice) == 50
    assert await balance_row(db, BOB) is None
    assert await count(db, CreditEntry) == 1


async def test_welcome_bonus_once(db: Database, ledger: LedgerService, alice: int) -> None:
    assert await tx(db, lambda s: ledger.grant_welcome_bonus(session=s, user_id=BOB, amount=0)) is None
    assert await count(db, CreditEntry) == 0
    first = await tx(db, lambda s: ledger.grant_welcome_bonus(session=s, user_id=alice, amount=10))
    # The operator raised the bonus since: the user keeps the first one and gets no second.
    second = await tx(db, lambda s: ledger.grant_welcome_bonus(session=s, user_id=alice, amount=25))
    assert first is not None and second is not None
    assert (first.replayed, second.replayed, second.entry_id) == (False, True, first.entry_id)
    assert await entries(db, alice) == [(EntryKind.BONUS, 10, 10, f"welcome:{alice}")]


# --- holds -------------------------------------------------------------------------------------


async def test_hold_then_capture_less_returns_the_rest(
    db: Database, ledger: LedgerService, clock: FrozenClock, alice: int
) -> None:
    await fund(db, ledger, alice, 100)
    held = await tx(
        db,
        lambda s: ledger.hold(
            session=s,
            user_id=alice,
            amount=30,
            key="gen:7:hold",
            reference="generation:7",
            description="ledger.generation",
            description_args={"images": 6},
        ),
    )
    assert (held.amount, held.balance) == (30, 70)
    status, captured, expires_at = await hold_row(db, held.hold_id)
    assert (status, captured, expires_at) == (HoldStatus.ACTIVE, 0, clock.now() + TTL)
    assert await tx(db, lambda s: ledger.held_total(session=s, user_id=alice)) == 30
    active = await tx(db, lambda s: ledger.active_holds(session=s, user_id=alice))
    assert [(h.id, h.amount, h.reference) for h in active] == [(held.hold_id, 30, "generation:7")]

    done = await tx(
        db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=20, key="gen:7:capture")
    )
    assert (done.status, done.captured, done.returned, done.balance) == (HoldStatus.CAPTURED, 20, 10, 80)
    assert (await hold_row(db, held.hold_id))[:2] == (HoldStatus.CAPTURED, 20)
    assert await balance_row(db, alice) == 80
    assert await entries(db, alice) == [
        (EntryKind.TOPUP, 100, 100, "fund:1001"),
        (EntryKind.HOLD, -30, 70, "gen:7:hold"),
        (EntryKind.CAPTURE, 10, 80, "gen:7:capture"),
    ]
    assert await tx(db, lambda s: ledger.held_total(session=s, user_id=alice)) == 0
    assert await verify(db, ledger) == []


async def test_full_capture_writes_a_zero_entry(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 30)
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=30, key="h", reference="r"))
    done = await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=30, key="c"))
    assert (done.captured, done.returned, done.balance) == (30, 0, 0)
    assert (await entries(db, alice))[-1] == (EntryKind.CAPTURE, 0, 0, "c")


async def test_release_gives_everything_back(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 50)
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=50, key="h", reference="r"))
    assert await balance_row(db, alice) == 0
    done = await tx(db, lambda s: ledger.release(session=s, hold_id=held.hold_id, key="rel"))
    assert (done.status, done.captured, done.returned, done.balance) == (HoldStatus.RELEASED, 0, 50, 50)
    assert (await hold_row(db, held.hold_id))[:2] == (HoldStatus.RELEASED, 0)
    assert (await entries(db, alice))[-1] == (EntryKind.RELEASE, 50, 50, "rel")


async def test_hold_without_credits_writes_nothing(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 9)
    with pytest.raises(InsufficientCredits) as error:
        await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=10, key="h", reference="r"))
    assert (error.value.balance, error.value.required, error.value.shortfall) == (9, 10, 1)
    assert await count(db, CreditHold) == 0
    assert await count(db, CreditEntry) == 1
    assert await balance_row(db, alice) == 9


async def test_a_hold_resolves_exactly_once(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 40)
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=40, key="h", reference="r"))
    first = await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=25, key="cap"))

    again = await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=25, key="cap"))
    assert again.replayed is True
    assert (again.entry_id, again.captured, again.returned, again.balance) == (first.entry_id, 25, 15, 15)

    with pytest.raises(HoldAlreadyResolved) as resolved:
        await tx(db, lambda s: ledger.release(session=s, hold_id=held.hold_id, key="rel"))
    assert resolved.value.status is HoldStatus.CAPTURED
    with pytest.raises(HoldAlreadyResolved):
        await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=25, key="cap2"))
    with pytest.raises(IdempotencyConflict):
        await tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=30, key="cap"))
    with pytest.raises(IdempotencyConflict):
        await tx(db, lambda s: ledger.release(session=s, hold_id=held.hold_id, key="cap"))
    assert await balance_row(db, alice) == 15
    assert await count(db, CreditEntry) == 3


async def test_capture_outside_the_hold_is_refused(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 10)
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=10, key="h", reference="r"))
    for amount in (11, -1):
        with pytest.raises(InvalidAmount):
            await tx(
                db, lambda s, a=amount: ledger.capture(session=s, hold_id=held.hold_id, amount=a, key="c")
            )
    with pytest.raises(HoldNotFound):
        await tx(db, lambda s: ledger.release(session=s, hold_id=uuid.uuid4(), key="r"))
    assert (await hold_row(db, held.hold_id))[0] is HoldStatus.ACTIVE


async def test_expiry_sweep_releases_only_expired_holds(
    db: Database, ledger: LedgerService, clock: FrozenClock, alice: int
) -> None:
    await fund(db, ledger, alice, 100)
    await fund(db, ledger, BOB, 100)
    old = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=10, key="h1", reference="r"))
    bobs = await tx(db, lambda s: ledger.hold(session=s, user_id=BOB, amount=5, key="h2", reference="r"))
    done = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=7, key="h3", reference="r"))
    await tx(db, lambda s: ledger.capture(session=s, hold_id=done.hold_id, amount=7, key="c3"))
    clock.advance(TTL / 2)
    young = await tx(db, lambda s: ledger.hold(session=s, user_id=alice, amount=20, key="h4", reference="r"))
    assert await tx(db, lambda s: ledger.expire_holds(session=s)) == []

    clock.advance(TTL / 2)  # the first holds reach expires_at; the young one is half-way
    swept = await tx(db, lambda s: ledger.expire_holds(session=s))
    assert sorted((r.hold_id, r.status, r.returned) for r in swept) == sorted(
        [(old.hold_id, HoldStatus.EXPIRED, 10), (bobs.hold_id, HoldStatus.EXPIRED, 5)]
    )
    assert (await hold_row(db, old.hold_id))[0] is HoldStatus.EXPIRED
    assert (await hold_row(db, young.hold_id))[0] is HoldStatus.ACTIVE
    assert (await hold_row(db, done.hold_id))[0] is HoldStatus.CAPTURED
    assert await balance_row(db, alice) == 100 - 7 - 20
    assert await balance_row(db, BOB) == 100
    assert (await entries(db, alice))[-1] == (EntryKind.RELEASE, 10, 73, f"hold:{old.hold_id}:expire")
    # A second sweep finds nothing; the job that comes back late can't spend an expired hold.
    assert await tx(db, lambda s: ledger.expire_holds(session=s)) == []
    with pytest.raises(HoldAlreadyResolved):
        await tx(db, lambda s: ledger.capture(session=s, hold_id=old.hold_id, amount=10, key="late"))

    clock.advance(TTL)
    assert [r.hold_id for r in await tx(db, lambda s: ledger.expire_holds(session=s))] == [young.hold_id]
    assert await balance_row(db, alice) == 93
    assert await verify(db, ledger) == []


async def test_expiry_sweep_in_batches(
    db: Database, ledger: LedgerService, clock: FrozenClock, alice: int
) -> None:
    await fund(db, ledger, alice, 10)
    for n in range(5):
        await tx(
            db, lambda s, n=n: ledger.hold(session=s, user_id=alice, amount=1, key=f"h{n}", reference="r")
        )
    clock.advance(TTL)
    sizes = [len(await tx(db, lambda s: ledger.expire_holds(session=s, limit=2))) for _ in range(4)]
    assert sizes == [2, 2, 1, 0]
    assert await balance_row(db, alice) == 10


# --- queries and verification ------------------------------------------------------------------


async def test_history_pages(db: Database, ledger: LedgerService, clock: FrozenClock, alice: int) -> None:
    for n in range(1, 8):
        await tx(db, lambda s, n=n: ledger.credit(session=s, user_id=alice, amount=n, key=f"k{n}"))
        if n % 2:
            clock.advance(timedelta(seconds=1))  # some entries share a timestamp
    first = await tx(db, lambda s: ledger.history(session=s, user_id=alice, limit=3))
    last = await tx(db, lambda s: ledger.history(session=s, user_id=alice, limit=3, offset=6))
    assert (first.total, first.has_more, last.has_more) == (7, True, False)
    assert [i.amount for i in first.items] == [7, 6, 5]
    assert [i.amount for i in last.items] == [1]
    assert [i.balance_after for i in first.items] == [28, 21, 15]
    empty = await tx(db, lambda s: ledger.history(session=s, user_id=BOB))
    assert (empty.total, empty.items) == (0, [])


async def test_the_account_of_a_user_whose_id_outgrows_32_bits(db: Database, ledger: LedgerService) -> None:
    # Telegram's newer user ids do; /balance read them as 32-bit integers and failed on PostgreSQL.
    user = 7_000_000_001
    await add_user(db, user)
    await add_user(db, user + 1)  # a neighbour whose credits must not show
    await fund(db, ledger, user, 30)
    await fund(db, ledger, user + 1, 99)
    await tx(db, lambda s: ledger.hold(session=s, user_id=user, amount=12, key="h", reference="gen:1"))
    view = await tx(db, lambda s: account_view(s, user_id=user, limit=5, offset=0))
    assert (view.balance, view.held, view.page.total) == (18, 12, 2)
    assert [op.state for op in view.page.operations] == [OperationState.PENDING, OperationState.DONE]
    assert [op.amount for op in view.page.operations] == [-12, 30]


async def test_verify_all_names_a_tampered_balance(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 20)
    await fund(db, ledger, BOB, 5)
    assert await verify(db, ledger) == []
    async with unit_of_work(db.sessions) as session:
        await session.execute(
            text("UPDATE credit_accounts SET balance = 999 WHERE user_id = :u"), {"u": alice}
        )
    problems = await verify(db, ledger)
    assert [(p.user_id, p.balance, p.entries_sum) for p in problems] == [(alice, 999, 20)]
    assert "balance != sum(entries)" in problems[0].reasons


async def test_verify_all_names_the_first_broken_entry(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    await fund(db, ledger, alice, 20)
    second = await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=5, key="c1"))
    await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=5, key="c2"))
    async with unit_of_work(db.sessions) as session:
        await session.execute(
            text("UPDATE credit_entries SET balance_after = 16 WHERE idempotency_key = 'c1'")
        )
    problems = await verify(db, ledger)
    assert len(problems) == 1
    assert (problems[0].user_id, problems[0].first_bad_entry_id) == (alice, second.entry_id)
    assert problems[0].reasons == ("balance_after chain broken",)


@pytest.mark.parametrize("step", [timedelta(0), timedelta(seconds=-1)], ids=["frozen", "backwards"])
async def test_entry_order_does_not_depend_on_clocks(
    db: Database,
    ledger: LedgerService,
    clock: FrozenClock,
    alice: int,
    step: timedelta,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another machine's clock: timestamps stand still or run backwards, and so do the ids.
    ids = (uuid.UUID(int=n) for n in range(1 << 40, 0, -1))
    monkeypatch.setattr("aisha.billing.ids.ordered_uuid", lambda: next(ids))
    steps: list[tuple[str, Callable[[AsyncSession], Awaitable[Any]]]] = [
        ("a", lambda s: ledger.credit(session=s, user_id=alice, amount=50, key="a")),
        ("h", lambda s: ledger.hold(session=s, user_id=alice, amount=20, key="h", reference="gen:1")),
        ("c", lambda s: ledger.charge(session=s, user_id=alice, amount=5, key="c")),
        ("b", lambda s: ledger.credit(session=s, user_id=BOB, amount=9, key="b")),
        ("x", lambda s: ledger.adjust(session=s, user_id=alice, amount=-3, key="x")),
    ]
    results: dict[str, Any] = {}
    for key, work in steps:
        results[key] = await tx(db, work)
        clock.advance(step)
    await tx(db, lambda s: ledger.capture(session=s, hold_id=results["h"].hold_id, amount=15, key="cap"))

    assert await verify(db, ledger) == []
    written = [("a", 50, 50), ("h", -20, 30), ("c", -5, 25), ("x", -3, 22), ("cap", 5, 27)]
    assert [(k, a, b) for _, a, b, k in await entries(db, alice)] == written
    page = await tx(db, lambda s: ledger.history(session=s, user_id=alice, limit=3))
    assert [(i.amount, i.balance_after) for i in page.items] == [(5, 27), (-3, 22), (-5, 25)]
    rest = await tx(db, lambda s: ledger.history(session=s, user_id=alice, limit=3, offset=3))
    assert [(i.amount, i.balance_after) for i in rest.items] == [(-20, 30), (50, 50)]

    async def numbers(session: AsyncSession) -> tuple[list[int], int | None, int | None]:
        seqs = await session.scalars(
            select(CreditEntry.seq).where(CreditEntry.user_id == alice).order_by(CreditEntry.seq)
        )
        last = await session.scalar(select(CreditAccount.last_seq).where(CreditAccount.user_id == alice))
        bob = await session.scalar(select(CreditAccount.last_seq).where(CreditAccount.user_id == BOB))
        return list(seqs), last, bob

    assert await tx(db, numbers) == ([1, 2, 3, 4, 5], 5, 1)


async def test_refused_and_replayed_operations_take_no_number(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    await fund(db, ledger, alice, 10)
    with pytest.raises(InsufficientCredits):
        await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=11, key="too-much"))
    await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=4, key="c"))
    await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=4, key="c"))  # replay
    last = await tx(
        db, lambda s: s.scalar(select(CreditAccount.last_seq).where(CreditAccount.user_id == alice))
    )
    assert last == 2
    assert await verify(db, ledger) == []


async def test_verify_all_names_a_tampered_seq(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 20)
    await fund(db, ledger, BOB, 20)
    for user_id in (alice, BOB):
        await tx(db, lambda s, u=user_id: ledger.charge(session=s, user_id=u, amount=5, key=f"c1:{u}"))
        await tx(db, lambda s, u=user_id: ledger.charge(session=s, user_id=u, amount=5, key=f"c2:{u}"))
    assert await verify(db, ledger) == []
    async with unit_of_work(db.sessions) as session:
        # Alice's newest entry renumbered past the counter; Bob's first charge moved to the front.
        await session.execute(
            text("UPDATE credit_entries SET seq = 9 WHERE idempotency_key = :k"), {"k": f"c2:{alice}"}
        )
        await session.execute(
            text("UPDATE credit_entries SET seq = 0 WHERE idempotency_key = :k"), {"k": f"c1:{BOB}"}
        )
    moved = await tx(
        db, lambda s: s.scalar(select(CreditEntry.id).where(CreditEntry.idempotency_key == f"c1:{BOB}"))
    )
    problems = await verify(db, ledger)
    assert [(p.user_id, p.reasons) for p in problems] == [
        (alice, ("last_seq != newest entry's seq",)),
        (BOB, ("balance_after chain broken",)),
    ]
    assert (problems[0].balance, problems[0].entries_sum, problems[0].first_bad_entry_id) == (10, 10, None)
    assert problems[1].first_bad_entry_id == moved


async def test_verify_all_names_a_tampered_counter(db: Database, ledger: LedgerService, alice: int) -> None:
    await fund(db, ledger, alice, 20)
    await fund(db, ledger, BOB, 5)
    async with unit_of_work(db.sessions) as session:
        await session.execute(text("UPDATE credit_accounts SET last_seq = 7 WHERE user_id = :u"), {"u": BOB})
    problems = await verify(db, ledger)
    assert [(p.user_id, p.balance, p.entries_sum, p.reasons) for p in problems] == [
        (BOB, 5, 5, ("last_seq != newest entry's seq",))
    ]


# --- concurrency on PostgreSQL -----------------------------------------------------------------


@pytest.mark.postgres
async def test_same_key_from_two_transactions_applies_once(
    postgres_db: Database, ledger: LedgerService
) -> None:
    db = postgres_db
    await add_user(db, ALICE)
    await fund(db, ledger, ALICE, 10)
    async with unit_of_work(db.sessions) as first:
        applied = await ledger.charge(session=first, user_id=ALICE, amount=10, key="gen:1:charge")
        # The second transaction waits for the first one's row lock, then finds the key taken
        # (and the credits gone): it must return the first result, not InsufficientCredits.
        second = asyncio.create_task(
            tx(db, lambda s: ledger.charge(session=s, user_id=ALICE, amount=10, key="gen:1:charge"))
        )
        assert await waits_for_a_lock(db, second)
    replayed = await second
    assert (applied.replayed, replayed.replayed, replayed.entry_id) == (False, True, applied.entry_id)
    assert await balance_row(db, ALICE) == 0
    assert await count(db, CreditEntry) == 2


@pytest.mark.postgres
async def test_two_transactions_resolving_one_hold(postgres_db: Database, ledger: LedgerService) -> None:
    db = postgres_db
    await add_user(db, ALICE)
    await fund(db, ledger, ALICE, 10)
    held = await tx(db, lambda s: ledger.hold(session=s, user_id=ALICE, amount=10, key="h", reference="r"))
    async with unit_of_work(db.sessions) as first:
        await ledger.capture(session=first, hold_id=held.hold_id, amount=4, key="cap")
        same_key = asyncio.create_task(
            tx(db, lambda s: ledger.capture(session=s, hold_id=held.hold_id, amount=4, key="cap"))
        )
        other_key = asyncio.create_task(
            tx(db, lambda s: ledger.release(session=s, hold_id=held.hold_id, key="rel"))
        )
        assert await waits_for_a_lock(db, same_key)
    assert (await same_key).replayed is True
    with pytest.raises(HoldAlreadyResolved):
        await other_key
    assert await balance_row(db, ALICE) == 6
    assert await verify(db, ledger) == []


# --- payments ----------------------------------------------------------------------------------


def _payment_args(
    payments: PaymentService, user_id: int, package_id: str = "m", **changes: Any
) -> dict[str, Any]:
    package = next(p for p in payments.packages if p.id == package_id)
    args: dict[str, Any] = {
        "user_id": user_id,
        "telegram_payment_charge_id": "stxCHARGE1",
        "provider_payment_charge_id": None,
        "currency": "XTR",
        "total_amount": package.stars,
        "payload": payments.make_invoice_payload(user_id=user_id, package=package),
    }
    args.update(changes)
    return args


async def test_payment_credits_once(db: Database, payments: PaymentService, alice: int) -> None:
    args = _payment_args(payments, alice)
    assert len(args["payload"].encode()) <= 128
    first = await tx(db, lambda s: payments.record_successful_payment(session=s, **args))
    second = await tx(db, lambda s: payments.record_successful_payment(session=s, **args))
    assert (first.credits, first.balance, first.replayed) == (110, 110, False)
    assert (second.credits, second.balance, second.replayed) == (110, 110, True)
    assert await balance_row(db, alice) == 110
    assert await entries(db, alice) == [(EntryKind.TOPUP, 110, 110, "payment:stxCHARGE1")]
    row = await tx(db, lambda s: s.scalar(select(Payment).where(Payment.user_id == alice)))
    assert row is not None
    assert (row.amount, row.credits, row.package_id, row.status) == (100, 110, "m", PaymentStatus.PAID)
    assert await count(db, Payment) == 1


async def test_payment_for_a_package_changed_since_pre_checkout_is_still_credited(
    db: Database, ledger: LedgerService, alice: int
) -> None:
    old = PaymentService(ledger=ledger, prices=PriceList())
    new = PaymentService(
        ledger=ledger,
        prices=PriceList(
            packages=(StarPackage(id="a", stars=100, credits=120), StarPackage(id="b", stars=10, credits=8))
        ),
    )
    args = _payment_args(old, alice, "m")
    result = await tx(db, lambda s: new.record_successful_payment(session=s, **args))
    assert result.credits == 80  # the least generous current rate: 10★ → 8
    assert await balance_row(db, alice) == 80


@pytest.mark.postgres
async def test_concurrent_duplicate_payments_credit_once(
    postgres_db: Database, payments: PaymentService
) -> None:
    db = postgres_db
    await add_user(db, ALICE)
    args = _payment_args(payments, ALICE)
    async with unit_of_work(db.sessions) as first:
        await payments.record_successful_payment(session=first, **args)
        duplicate = asyncio.create_task(
            tx(db, lambda s: payments.record_successful_payment(session=s, **args))
        )
        assert await waits_for_a_lock(db, duplicate)
    assert (await duplicate).replayed is True
    # And a free-for-all of eight deliveries of another payment.
    args8 = _payment_args(payments, ALICE, "s", telegram_payment_charge_id="stxCHARGE2")
    results = await asyncio.gather(
        *(tx(db, lambda s: payments.record_successful_payment(session=s, **args8)) for _ in range(8))
    )
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    assert await balance_row(db, ALICE) == 110 + 50
    assert await count(db, Payment) == 2
    assert await count(db, CreditEntry) == 2


async def test_pre_checkout(db: Database, payments: PaymentService, alice: int) -> None:
    await add_user(db, 1003, blocked=True)
    package = next(p for p in payments.packages if p.id == "l")
    payload = payments.make_invoice_payload(user_id=alice, package=package)

    async def check(
        user_id: int = alice, currency: str = "XTR", total: int = 250, data: str = payload
    ) -> str | None:
        return await tx(
            db,
            lambda s: payments.validate_pre_checkout(
                session=s, user_id=user_id, currency=currency, total_amount=total, payload=data
            ),
        )

    assert await check() is None
    assert await check(currency="USD") == "payments.error.currency"
    assert await check(total=249) == "payments.error.amount_mismatch"
    assert await check(data=payload.replace(":l:", ":gone:")) == "payments.error.package_gone"
    assert await check(user_id=BOB) == "payments.error.wrong_user"
    assert await check(data="garbage") == "payments.error.invalid_payload"
    blocked_payload = payments.make_invoice_payload(user_id=1003, package=package)
    assert await check(user_id=1003, data=blocked_payload) == "payments.error.blocked"
    ghost_payload = payments.make_invoice_payload(user_id=4242, package=package)
    assert await check(user_id=4242, data=ghost_payload) == "payments.error.unknown_user"
    assert payload != payments.make_invoice_payload(user_id=alice, package=package)  # nonce


async def test_refund_takes_the_credits_back(db: Database, payments: PaymentService, alice: int) -> None:
    args = _payment_args(payments, alice)
    await tx(db, lambda s: payments.record_successful_payment(session=s, **args))
    refund = await tx(db, lambda s: payments.refund(session=s, telegram_payment_charge_id="stxCHARGE1"))
    assert (refund.user_id, refund.stars, refund.credits, refund.balance) == (alice, 100, 110, 0)
    assert await balance_row(db, alice) == 0
    assert (await entries(db, alice))[-1] == (EntryKind.REFUND, -110, 0, "refund:stxCHARGE1")
    row = await tx(db, lambda s: s.scalar(select(Payment)))
    # The intent: Telegram's refundStarPayment is owed (complete_refund, after commit).
    assert row is not None and row.status is PaymentStatus.REFUNDING and row.refunded_at is not None
    with pytest.raises(AlreadyRefunded):  # RefundInProgress, a kind of AlreadyRefunded
        await tx(db, lambda s: payments.refund(session=s, telegram_payment_charge_id="stxCHARGE1"))
    with pytest.raises(PaymentNotFound):
        await tx(db, lambda s: payments.refund(session=s, telegram_payment_charge_id="nope"))
    # Telegram re-delivering the old update doesn't credit the refunded payment again.
    again = await tx(db, lambda s: payments.record_successful_payment(session=s, **args))
    assert again.replayed is True
    assert await balance_row(db, alice) == 0


async def test_refund_refused_when_the_credits_are_spent(
    db: Database, ledger: LedgerService, payments: PaymentService, alice: int
) -> None:
    args = _payment_args(payments, alice)
    await tx(db, lambda s: payments.record_successful_payment(session=s, **args))
    await tx(db, lambda s: ledger.charge(session=s, user_id=alice, amount=11, key="spent"))
    with pytest.raises(InsufficientCredits) as error:
        await tx(db, lambda s: payments.refund(session=s, telegram_payment_charge_id="stxCHARGE1"))
    assert (error.value.balance, error.value.required, error.value.shortfall) == (99, 110, 11)
    row = await tx(db, lambda s: s.scalar(select(Payment)))
    assert row is not None and row.status is PaymentStatus.PAID and row.refunded_at is None
    assert await balance_row(db, alice) == 99
    assert [e[0] for e in await entries(db, alice)] == [EntryKind.TOPUP, EntryKind.CHARGE]
