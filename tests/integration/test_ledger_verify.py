"""`aisha ledger verify` proves conservation, on SQLite and PostgreSQL.

A real ledger is built through the services (payments credited and refunded, holds captured,
released and expired, one still active); verify finds it clean. Then the books are corrupted in
one way per test, most of them so that every balance still adds up, and verify must name the
account and what is wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import EntryKind, HoldStatus, LedgerService, PaymentService, PaymentStatus, PriceList
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, Payment
from aisha.billing.payments import payment_key, refund_key
from aisha.billing.service import AccountMismatch
from aisha.clock import FrozenClock
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.users.models import User
from tests.conftest import Database, run_aisha

T = TypeVar("T")
TTL = timedelta(hours=1)
ALICE, BOB, CAROL = 1001, 1002, 1003  # holds; payments; a long charge id and a full capture
LONG_CHARGE = "c" * 200  # keyed by its sha256 digest
FORGED_AT = FrozenClock().now()


@dataclass
class Books:
    """The ids of what `build` made, for the corruptions to aim at."""

    ledger: LedgerService
    clock: FrozenClock
    captured: uuid.UUID  # Alice: 30 held, 20 captured, 10 returned
    released: uuid.UUID  # Alice: 300 held and released
    expired: uuid.UUID  # Alice: 300 held and expired by the sweep
    active: uuid.UUID  # Alice: 5 held
    paid: str  # Bob's paid payment (charge id): 110 credits
    refunded: str  # Bob's refunded payment: 50 credits


async def build(db: Database) -> Books:
    clock = FrozenClock()
    ledger = LedgerService(clock=clock, hold_ttl=TTL)
    payments = PaymentService(ledger=ledger, prices=PriceList())

    async def tx(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with unit_of_work(db.sessions) as session:
            return await work(session)

    async def users(session: AsyncSession) -> None:
        session.add_all(User(telegram_id=user_id, language="en") for user_id in (ALICE, BOB, CAROL))

    await tx(users)

    async def pay(user_id: int, charge: str, package_id: str) -> None:
        package = payments.packages[[p.id for p in payments.packages].index(package_id)]
        await tx(
            lambda s: payments.record_successful_payment(
                session=s,
                user_id=user_id,
                telegram_payment_charge_id=charge,
                provider_payment_charge_id=None,
                currency="XTR",
                total_amount=package.stars,
                payload=payments.make_invoice_payload(user_id=user_id, package=package),
            )
        )

    async def hold(user_id: int, amount: int, name: str) -> uuid.UUID:
        result = await tx(
            lambda s: ledger.hold(
                session=s, user_id=user_id, amount=amount, key=f"{name}:hold", reference=name
            )
        )
        return result.hold_id

    await pay(ALICE, "alice-xl", "xl")  # 650
    await pay(BOB, "bob-m", "m")  # 110
    await pay(BOB, "bob-s", "s")  # 50
    await tx(lambda s: payments.refund(session=s, telegram_payment_charge_id="bob-s"))
    await pay(CAROL, LONG_CHARGE, "l")  # 300

    captured = await hold(ALICE, 30, "gen:1")
    await tx(lambda s: ledger.capture(session=s, hold_id=captured, amount=20, key="gen:1:capture"))
    released = await hold(ALICE, 300, "avatar:1")
    await tx(lambda s: ledger.release(session=s, hold_id=released, key="avatar:1:release"))
    expired = await hold(ALICE, 300, "avatar:2")
    full = await hold(CAROL, 40, "gen:2")
    await tx(lambda s: ledger.capture(session=s, hold_id=full, amount=40, key="gen:2:capture"))
    clock.advance(TTL)
    assert len(await tx(lambda s: ledger.expire_holds(session=s))) == 1
    active = await hold(ALICE, 5, "gen:3")
    return Books(ledger, clock, captured, released, expired, active, paid="bob-m", refunded="bob-s")


async def verify(db: Database, books: Books) -> list[AccountMismatch]:
    async with unit_of_work(db.sessions) as session:
        return await books.ledger.verify_all(session=session)


async def balances(db: Database) -> dict[int, int]:
    async with unit_of_work(db.sessions) as session:
        rows = await session.execute(select(CreditAccount.user_id, CreditAccount.balance))
        return {int(user_id): int(balance) for user_id, balance in rows}


async def test_a_real_ledger_is_clean(db: Database) -> None:
    books = await build(db)
    assert await balances(db) == {ALICE: 625, BOB: 110, CAROL: 260}
    assert await verify(db, books) == []


# --- the corruptions ---------------------------------------------------------------------------


async def append_entry(
    session: AsyncSession,
    *,
    user_id: int,
    kind: EntryKind,
    amount: int,
    key: str,
    hold_id: uuid.UUID | None = None,
    reference: str | None = None,
) -> None:
    """A forged entry that keeps the balance, the counter and the balance_after chain right."""
    balance, last_seq = (
        await session.execute(
            select(CreditAccount.balance, CreditAccount.last_seq).where(CreditAccount.user_id == user_id)
        )
    ).one()
    await session.execute(
        insert(CreditEntry).values(
            id=uuid.uuid4(),
            user_id=user_id,
            kind=kind,
            amount=amount,
            balance_after=balance + amount,
            seq=last_seq + 1,
            hold_id=hold_id,
            reference=reference,
            description="ledger.forged",
            description_args={},
            idempotency_key=key,
            created_at=FORGED_AT,
        )
    )
    await session.execute(
        update(CreditAccount)
        .where(CreditAccount.user_id == user_id)
        .values(balance=balance + amount, last_seq=last_seq + 1)
    )


async def payment_id(session: AsyncSession, charge: str) -> uuid.UUID:
    found = await session.scalar(select(Payment.id).where(Payment.telegram_payment_charge_id == charge))
    assert found is not None
    return found


async def flip_back_to_active(session: AsyncSession, books: Books) -> None:
    await session.execute(
        update(CreditHold)
        .where(CreditHold.id == books.released)
        .values(status=HoldStatus.ACTIVE, resolved_at=None)
    )


async def flip_back_and_expire_again(session: AsyncSession, books: Books) -> None:
    # The released hold is active again and past its time: the sweep gives its 300 back twice.
    await flip_back_to_active(session, books)
    assert [r.returned for r in await books.ledger.expire_holds(session=session)] == [300]


async def delete_resolution(session: AsyncSession, books: Books) -> None:
    await session.execute(delete(CreditEntry).where(CreditEntry.idempotency_key == "gen:1:capture"))


async def add_second_resolution(session: AsyncSession, books: Books) -> None:
    await append_entry(
        session, user_id=ALICE, kind=EntryKind.RELEASE, amount=10, key="gen:1:again", hold_id=books.captured
    )


async def change_resolution_amount(session: AsyncSession, books: Books) -> None:
    await session.execute(
        update(CreditEntry).where(CreditEntry.idempotency_key == "gen:1:capture").values(amount=15)
    )


async def change_captured_amount(session: AsyncSession, books: Books) -> None:
    await session.execute(
        update(CreditHold).where(CreditHold.id == books.captured).values(captured_amount=25)
    )


async def detach_hold_entry(session: AsyncSession, books: Books) -> None:
    await session.execute(
        update(CreditEntry).where(CreditEntry.idempotency_key == "gen:1:hold").values(hold_id=None)
    )


async def delete_topup(session: AsyncSession, books: Books) -> None:
    await session.execute(delete(CreditEntry).where(CreditEntry.idempotency_key == payment_key(books.paid)))


async def duplicate_topup(session: AsyncSession, books: Books) -> None:
    reference = f"payment:{await payment_id(session, books.paid)}"
    await append_entry(
        session, user_id=BOB, kind=EntryKind.TOPUP, amount=110, key="payment:again", reference=reference
    )


async def delete_payment(session: AsyncSession, books: Books) -> None:
    await session.execute(delete(Payment).where(Payment.telegram_payment_charge_id == books.paid))


async def change_payment_credits(session: AsyncSession, books: Books) -> None:
    await session.execute(
        update(Payment).where(Payment.telegram_payment_charge_id == books.paid).values(credits=1110)
    )


async def refund_without_debit(session: AsyncSession, books: Books) -> None:
    # Marked refunded (the Stars went back) while the credits stayed.
    await session.execute(
        update(Payment)
        .where(Payment.telegram_payment_charge_id == books.paid)
        .values(status=PaymentStatus.REFUNDED, refunded_at=FORGED_AT)
    )


async def delete_refund_debit(session: AsyncSession, books: Books) -> None:
    await session.execute(
        delete(CreditEntry).where(CreditEntry.idempotency_key == refund_key(books.refunded))
    )


Corruption = Callable[[AsyncSession, Books], Awaitable[None]]

# (corruption, the account named, what its lines must say, whether every balance still adds up)
CASES: dict[str, tuple[Corruption, int, list[str], bool]] = {
    "hold flipped back to active": (
        flip_back_to_active,
        ALICE,
        [
            "(active, 0 of 300 captured): active, but resolved by 1 release entry",
            "active holds total 305, but the entries still hold 5",
        ],
        True,
    ),
    "flipped back and expired again": (
        flip_back_and_expire_again,
        ALICE,
        ["(expired, 0 of 300 captured): resolved 2 times (2 release entries), expected once"],
        True,
    ),
    "resolution entry deleted": (
        delete_resolution,
        ALICE,
        [
            "(captured, 20 of 30 captured): captured, but has no capture entry",
            "active holds total 5, but the entries still hold 35",
        ],
        False,
    ),
    "second resolution entry": (
        add_second_resolution,
        ALICE,
        ["(captured, 20 of 30 captured): resolved 2 times (1 capture and 1 release entries), expected once"],
        True,
    ),
    "resolution amount changed": (
        change_resolution_amount,
        ALICE,
        ["(captured, 20 of 30 captured): resolution entry returns +15, the hold's split returns +10"],
        False,
    ),
    "captured amount changed": (
        change_captured_amount,
        ALICE,
        ["(captured, 25 of 30 captured): resolution entry returns +10, the hold's split returns +5"],
        True,
    ),
    "hold entry detached": (
        detach_hold_entry,
        ALICE,
        [
            "(captured, 20 of 30 captured): 0 hold entries, expected 1",
            "1 hold entry (-30) without their hold",
        ],
        True,
    ),
    "top-up entry deleted": (
        delete_topup,
        BOB,
        ["payment bob-m: paid, but has no top-up entry (expected +110)"],
        False,
    ),
    "duplicate top-up": (
        duplicate_topup,
        BOB,
        ["payment bob-m: 2 top-up entries (+110, +110), expected one of +110"],
        True,
    ),
    "payment deleted": (
        delete_payment,
        BOB,
        ["topup entry payment:bob-m (+110) for a payment that doesn't exist"],
        True,
    ),
    "payment credits changed": (
        change_payment_credits,
        BOB,
        ["payment bob-m: top-up entry of +110, expected +1110 for 1110 credits"],
        True,
    ),
    "refunded without its debit": (
        refund_without_debit,
        BOB,
        ["payment bob-m: refunded, but has no refund debit entry (expected -110)"],
        True,
    ),
    "refund debit deleted": (
        delete_refund_debit,
        BOB,
        ["payment bob-s: refunded, but has no refund debit entry (expected -50)"],
        False,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
async def test_verify_names_the_account_of_each_corruption(db: Database, case: str) -> None:
    corrupt, user_id, expected, balances_add_up = CASES[case]
    books = await build(db)
    async with unit_of_work(db.sessions) as session:
        await corrupt(session, books)

    found = await verify(db, books)
    assert [bad.user_id for bad in found] == [user_id]
    (bad,) = found
    for text in expected:
        assert any(text in problem for problem in bad.problems), (text, bad.problems)
    # Most corruptions leave every balance adding up: the old checks alone would call them clean.
    assert (bad.reasons == ()) is balances_add_up, bad.reasons


async def test_the_sha256_key_of_a_long_charge_id_is_checked(db: Database) -> None:
    books = await build(db)
    async with unit_of_work(db.sessions) as session:
        # The top-up entry re-keyed with the plain (too long to store) form: not the payment's key.
        await session.execute(
            update(CreditEntry)
            .where(CreditEntry.idempotency_key == payment_key(LONG_CHARGE))
            .values(idempotency_key=f"payment:{LONG_CHARGE[:150]}")
        )
    (bad,) = await verify(db, books)
    assert bad.user_id == CAROL
    assert bad.problems == (
        f"payment {LONG_CHARGE}: top-up entry keyed payment:{LONG_CHARGE[:150]}, expected {payment_key(LONG_CHARGE)}",
    )


# --- the command -------------------------------------------------------------------------------


def test_ledger_verify_command_names_the_invented_credits(sqlite_url: str, tmp_path: Path) -> None:
    async def setup() -> Books:
        engine = create_engine(sqlite_url)
        try:
            return await build(Database(sqlite_url, engine, create_session_factory(engine)))
        finally:
            await engine.dispose()

    async def invent(books: Books) -> None:
        engine = create_engine(sqlite_url)
        try:
            async with unit_of_work(create_session_factory(engine)) as session:
                await flip_back_and_expire_again(session, books)
        finally:
            await engine.dispose()

    books = asyncio.run(setup())
    clean = run_aisha("ledger", "verify", database_url=sqlite_url, cwd=tmp_path)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "ledger verify: all 3 accounts add up\n", "")

    asyncio.run(invent(books))
    bad = run_aisha("ledger", "verify", database_url=sqlite_url, cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        f"account {ALICE}: hold {books.released} (expired, 0 of 300 captured):"
        " resolved 2 times (2 release entries), expected once",
        "ledger verify: 1 of 3 accounts do not add up",
    ]
    assert bad.stdout == ""
