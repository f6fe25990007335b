"""Refunds of Stars payments as an intent: every path ends exactly once, and the ledger adds up.

Telegram's refundStarPayment is a scripted StarRefunds here that behaves like the real one (a
second refund of a charge is CHARGE_ALREADY_REFUNDED), so races can be driven step by step.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from aisha.admin.models import Stats
from aisha.admin.stats import collect_stats
from aisha.billing.errors import ChargeAlreadyRefunded, RefundInProgress, RefundRefused
from aisha.billing.models import CreditEntry, EntryKind, Payment, PaymentStatus
from aisha.billing.payments import PaymentService
from aisha.billing.prices import PriceList
from aisha.billing.results import RefundOutcome
from aisha.billing.service import LedgerService
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.users.models import User
from tests.conftest import Database

USER = 7001
CHARGE = "stxREFUND1"


class ScriptedRefunds:
    """refundStarPayment: the next scripted error, else a refund (once per charge, like Telegram)."""

    def __init__(self) -> None:
        self.script: list[Exception] = []
        self.refunded: set[str] = set()
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set, calls wait for it

    async def refund_star_payment(self, *, user_id: int, telegram_payment_charge_id: str) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            raise self.script.pop(0)
        if telegram_payment_charge_id in self.refunded:
            raise ChargeAlreadyRefunded("Bad Request: CHARGE_ALREADY_REFUNDED")
        self.refunded.add(telegram_payment_charge_id)


@pytest.fixture
def refunds() -> ScriptedRefunds:
    return ScriptedRefunds()


@pytest.fixture
def ledger() -> LedgerService:
    return LedgerService(clock=FrozenClock(), hold_ttl=timedelta(hours=4))


@pytest.fixture
async def payments(db: Database, ledger: LedgerService, refunds: ScriptedRefunds) -> PaymentService:
    service = PaymentService(ledger=ledger, prices=PriceList(), sessions=db.sessions, refunds=refunds)
    async with unit_of_work(db.sessions) as session:
        session.add(User(telegram_id=USER, language="en"))
    package = next(p for p in service.packages if p.id == "m")
    async with unit_of_work(db.sessions) as session:
        await service.record_successful_payment(
            session=session,
            user_id=USER,
            telegram_payment_charge_id=CHARGE,
            provider_payment_charge_id=None,
            currency="XTR",
            total_amount=package.stars,
            payload=service.make_invoice_payload(user_id=USER, package=package),
        )
    return service


async def _start(db: Database, payments: PaymentService) -> None:
    async with unit_of_work(db.sessions) as session:
        await payments.refund(session=session, telegram_payment_charge_id=CHARGE)


async def _state(
    db: Database, ledger: LedgerService
) -> tuple[PaymentStatus, int, list[tuple[EntryKind, int, str]]]:
    async with db.sessions() as session:
        status = await session.scalar(select(Payment.status))
        balance = await ledger.get_balance(session=session, user_id=USER)
        rows = await session.execute(
            select(CreditEntry.kind, CreditEntry.amount, CreditEntry.idempotency_key).order_by(
                CreditEntry.seq
            )
        )
        assert await ledger.verify_all(session=session) == []
    assert status is not None
    return status, balance, [(r.kind, r.amount, r.idempotency_key) for r in rows]


TOPUP = (EntryKind.TOPUP, 110, f"payment:{CHARGE}")
DEBIT = (EntryKind.REFUND, -110, f"refund:{CHARGE}")


async def test_two_sweeps_at_once_end_the_refund_once(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    refunds.script = [OSError("connection reset")]
    await _start(db, payments)
    assert (
        await payments.complete_refund(telegram_payment_charge_id=CHARGE)
    ).outcome is RefundOutcome.PENDING
    assert (await _state(db, ledger))[0] is PaymentStatus.REFUNDING

    refunds.gate = asyncio.Event()
    both = asyncio.gather(payments.sweep_refunds(), payments.sweep_refunds())
    async with asyncio.timeout(10):
        while refunds.calls < 3:  # both sweeps found it REFUNDING and are asking Telegram
            await asyncio.sleep(0.01)
    refunds.gate.set()
    assert await both == [1, 1]  # one refunded, the other heard CHARGE_ALREADY_REFUNDED
    assert refunds.refunded == {CHARGE} and refunds.calls == 3
    assert await _state(db, ledger) == (PaymentStatus.REFUNDED, 0, [TOPUP, DEBIT])
    assert await payments.sweep_refunds() == 0


async def test_a_refused_refund_gives_the_credits_back_once(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    """Once the refusal is recorded, completing again (the sweep, a retry) asks Telegram nothing
    and gives nothing back a second time."""
    await _start(db, payments)
    refunds.script = [RefundRefused("Bad Request: CHARGE_NOT_FOUND")]
    refused = await payments.complete_refund(telegram_payment_charge_id=CHARGE)
    assert (refused.outcome, refused.reason) == (RefundOutcome.REFUSED, "Bad Request: CHARGE_NOT_FOUND")
    again = await payments.complete_refund(telegram_payment_charge_id=CHARGE)
    assert again.outcome is RefundOutcome.REFUSED and refunds.calls == 1  # not asked again
    assert await _state(db, ledger) == (
        PaymentStatus.PAID,
        110,
        [TOPUP, DEBIT, (EntryKind.REFUND, 110, f"refund-back:{CHARGE}")],
    )


async def test_a_second_refund_can_not_start_while_one_is_under_way(
    db: Database, payments: PaymentService, ledger: LedgerService
) -> None:
    await _start(db, payments)
    with pytest.raises(RefundInProgress):
        await _start(db, payments)
    assert await _state(db, ledger) == (PaymentStatus.REFUNDING, 0, [TOPUP, DEBIT])


async def test_concurrent_refund_starts_take_the_credits_once(
    db: Database, payments: PaymentService, ledger: LedgerService
) -> None:
    results = await asyncio.gather(_start(db, payments), _start(db, payments), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "RefundInProgress"]
    assert await _state(db, ledger) == (PaymentStatus.REFUNDING, 0, [TOPUP, DEBIT])


async def test_telegrams_refund_message_during_our_refund_takes_nothing_more(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    await _start(db, payments)
    async with unit_of_work(db.sessions) as session:
        told = await payments.record_refunded_payment(
            session=session, user_id=USER, telegram_payment_charge_id=CHARGE
        )
    assert told is not None and (told.taken, told.shortfall) == (0, 0)
    completion = await payments.complete_refund(telegram_payment_charge_id=CHARGE)
    assert completion.outcome is RefundOutcome.REFUNDED and refunds.calls == 0
    assert await _state(db, ledger) == (PaymentStatus.REFUNDED, 0, [TOPUP, DEBIT])


async def test_a_refund_outside_the_bot_of_spent_credits_warns_the_operator(
    db: Database, payments: PaymentService, ledger: LedgerService
) -> None:
    async with unit_of_work(db.sessions) as session:
        await ledger.charge(
            session=session, user_id=USER, amount=30, key="spent", description="ledger.charge"
        )
    with capture_logs() as logs:
        async with unit_of_work(db.sessions) as session:
            told = await payments.record_refunded_payment(
                session=session, user_id=USER, telegram_payment_charge_id=CHARGE
            )
    assert told is not None and (told.taken, told.shortfall, told.replayed) == (80, 30, False)
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert (warning["event"], warning["user_id"], warning["shortfall"]) == (
        "payment.refund_shortfall",
        USER,
        30,
    )
    status, balance, entries = await _state(db, ledger)
    assert (status, balance, entries[-1]) == (PaymentStatus.REFUNDED, 0, (EntryKind.REFUND, -80, DEBIT[2]))
    async with db.sessions() as session:
        assert await session.scalar(select(Payment.refund_shortfall)) == 30


def _capped(
    db: Database, ledger: LedgerService, refunds: ScriptedRefunds, *, max_asks: int
) -> PaymentService:
    """The payments, asking Telegram at most `max_asks` times for a refund."""
    return PaymentService(
        ledger=ledger, prices=PriceList(), sessions=db.sessions, refunds=refunds, max_refund_asks=max_asks
    )


async def _stats(db: Database) -> Stats:
    async with db.sessions() as session:
        return await collect_stats(session, now=datetime.now(UTC), credit_value_micro_usd=10_000)


async def _refunds_waiting(db: Database) -> int:
    return (await _stats(db)).refunds_waiting


async def test_a_refund_telegram_never_answers_is_asked_a_bounded_number_of_times(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    capped = _capped(db, ledger, refunds, max_asks=3)
    refunds.script = [OSError("timeout"), OSError("timeout"), OSError("timeout")]
    await _start(db, capped)
    assert (await capped.complete_refund(telegram_payment_charge_id=CHARGE)).outcome is RefundOutcome.PENDING
    assert await capped.sweep_refunds() == 0  # the second ask, unanswered too
    with capture_logs() as logs:
        assert await capped.sweep_refunds() == 0  # the third and last
    [given_up] = [log for log in logs if log["event"] == "payment.refund_given_up"]
    assert (given_up["log_level"], given_up["charge_id"], given_up["asks"]) == ("error", CHARGE, 3)
    assert await _refunds_waiting(db) == 1  # the admin panel shows it

    assert await capped.sweep_refunds() == 0
    assert refunds.calls == 3  # asked no more
    # Left for the operator as it was: credits taken back once, no Stars known to be returned.
    assert await _state(db, ledger) == (PaymentStatus.REFUNDING, 0, [TOPUP, DEBIT])
    async with db.sessions() as session:
        payment = (await session.scalars(select(Payment))).one()
    assert (payment.refund_asks, payment.refund_given_up_at is not None) == (3, True)

    # Telegram's refunded_payment comes after all: the refund ends, nothing more is taken.
    async with unit_of_work(db.sessions) as session:
        await capped.record_refunded_payment(session=session, user_id=USER, telegram_payment_charge_id=CHARGE)
    assert await _state(db, ledger) == (PaymentStatus.REFUNDED, 0, [TOPUP, DEBIT])
    assert await _refunds_waiting(db) == 0


async def test_the_operators_refund_asks_again_where_the_sweep_gave_up(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    capped = _capped(db, ledger, refunds, max_asks=2)
    refunds.script = [OSError("timeout"), OSError("timeout"), OSError("timeout")]
    await _start(db, capped)
    assert (await capped.complete_refund(telegram_payment_charge_id=CHARGE)).outcome is RefundOutcome.PENDING
    assert await capped.sweep_refunds() == 0  # the last ask: given up
    stats = await _stats(db)
    assert (stats.refunds_waiting, stats.waiting_refund_charges) == (1, (CHARGE,))

    async with unit_of_work(db.sessions) as session:  # the operator's /refund of the charge
        again = await capped.refund(session=session, telegram_payment_charge_id=CHARGE)
    assert (again.credits, again.balance) == (110, 0)
    assert await _refunds_waiting(db) == 0
    # Nothing is taken twice, and while it is being asked again it can't be started once more.
    assert await _state(db, ledger) == (PaymentStatus.REFUNDING, 0, [TOPUP, DEBIT])
    async with unit_of_work(db.sessions) as session:
        with pytest.raises(RefundInProgress):
            await capped.refund(session=session, telegram_payment_charge_id=CHARGE)
    # Asked with every ask the bound allows: the first is unanswered, the sweep's gets through.
    assert (await capped.complete_refund(telegram_payment_charge_id=CHARGE)).outcome is RefundOutcome.PENDING
    assert await capped.sweep_refunds() == 1
    assert refunds.calls == 4 and refunds.refunded == {CHARGE}
    assert await _state(db, ledger) == (PaymentStatus.REFUNDED, 0, [TOPUP, DEBIT])


async def test_a_refund_started_again_after_a_refusal_gets_every_ask_again(
    db: Database, payments: PaymentService, ledger: LedgerService, refunds: ScriptedRefunds
) -> None:
    capped = _capped(db, ledger, refunds, max_asks=2)
    refunds.script = [OSError("timeout"), RefundRefused("Bad Request: CHARGE_NOT_FOUND"), OSError("timeout")]
    await _start(db, capped)
    assert (await capped.complete_refund(telegram_payment_charge_id=CHARGE)).outcome is RefundOutcome.PENDING
    assert await capped.sweep_refunds() == 1  # refused: paid again, credits back
    await _start(db, capped)  # the second refund of the payment
    assert (await capped.complete_refund(telegram_payment_charge_id=CHARGE)).outcome is RefundOutcome.PENDING
    assert await capped.sweep_refunds() == 1  # its own second ask: refunded now
    assert refunds.refunded == {CHARGE} and refunds.calls == 4
    status, balance, _ = await _state(db, ledger)
    assert (status, balance) == (PaymentStatus.REFUNDED, 0)
