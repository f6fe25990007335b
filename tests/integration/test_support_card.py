"""What an operator sees about a user writing to support, read from the ledger and payments, on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from aisha.billing import LedgerService, PaymentService, PaymentStatus, PriceList
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.i18n import Translator
from aisha.support.service import RECENT_PAYMENTS, SupportService
from aisha.users.models import User
from tests.conftest import Database

ALICE, ADMIN, STRANGER = 1001, 900, 901


async def test_card_shows_the_newest_payments_with_status_and_the_open_holds(db: Database) -> None:
    clock = FrozenClock()
    ledger = LedgerService(clock=clock, hold_ttl=timedelta(hours=1))
    payments = PaymentService(ledger=ledger, prices=PriceList())
    support = SupportService(ledger=ledger, operator_ids=frozenset({ADMIN, STRANGER}))
    package = PriceList().packages[0]
    async with unit_of_work(db.sessions) as session:
        session.add(User(telegram_id=ALICE, first_name="Alice", username="alice", language="en"))
        session.add(User(telegram_id=ADMIN, first_name="Op", language="ru"))
        await session.flush()
        for n in range(RECENT_PAYMENTS + 2):
            clock.advance(timedelta(minutes=1))
            await payments.record_successful_payment(
                session=session,
                user_id=ALICE,
                telegram_payment_charge_id=f"charge-{n}",
                provider_payment_charge_id=None,
                currency="XTR",
                total_amount=package.stars,
                payload=payments.make_invoice_payload(user_id=ALICE, package=package),
            )
        await payments.refund(session=session, telegram_payment_charge_id="charge-6")
        kept = await ledger.hold(session=session, user_id=ALICE, amount=7, key="h1", reference="generation:a")
        done = await ledger.hold(session=session, user_id=ALICE, amount=3, key="h2", reference="generation:b")
        await ledger.release(session=session, hold_id=done.hold_id, key="r2")

    async with db.sessions() as session:
        card = await support.card(session=session, user_id=ALICE)
        operators = await support.operators(session=session)
        assert await support.card(session=session, user_id=4242) is None

    assert card is not None
    assert (card.username, card.language) == ("alice", "en")
    assert [p.charge_id for p in card.payments] == [
        "charge-6",
        "charge-5",
        "charge-4",
        "charge-3",
        "charge-2",
    ]
    # The refund is under way: Telegram's refundStarPayment comes after commit (complete_refund).
    assert [p.status for p in card.payments] == [PaymentStatus.REFUNDING] + [PaymentStatus.PAID] * 4
    assert (card.payments[1].stars, card.payments[1].credits) == (package.stars, package.credits)
    assert [h.id for h in card.holds] == [kept.hold_id]
    assert card.held == 7
    assert card.balance == 6 * package.credits - 7
    # Operators in id order; one who never wrote to the bot has no known language.
    assert [(o.telegram_id, o.language) for o in operators] == [(ADMIN, "ru"), (STRANGER, None)]
    assert support.available and support.is_operator(user_id=ADMIN) and not support.is_operator(user_id=ALICE)
    assert not SupportService(ledger=ledger, operator_ids=frozenset()).available


def test_every_payment_status_reads_in_both_languages() -> None:
    translator = Translator.load()
    labels = {
        locale: [
            translator.bind(locale)(f"support.payment_status.{status.value}") for status in PaymentStatus
        ]
        for locale in ("en", "ru")
    }
    assert labels == {
        "en": ["paid", "refund under way", "refunded"],
        "ru": ["оплачен", "возврат в процессе", "возвращён"],
    }
