"""Stars payments and refunds when Telegram fails: the money that moved stays moved.

A thank-you that can't be sent, an admin's reply that fails, a refundStarPayment that gets no
answer or a crash in between: the payment is credited (or refunded) exactly once, the user is
told at most once, and every test ends with the ledger adding up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from aisha.billing.models import CreditEntry, EntryKind, Payment, PaymentStatus
from aisha.db.session import unit_of_work
from aisha.notices import NoticeRules, OwedMessage
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.faults import Fault
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, eventually, press, say

ADMIN = FakeUser(id=900, first_name="Op", language_code="en")
THANKS = "Thank you! 110 credits added. Your balance: <b>110</b>."


async def _start(make_settings: Callable[..., Any], start_app: Callable[..., Any], mode: str) -> Runtime:
    overrides: dict[str, Any] = {"admin_ids": str(ADMIN.id), "notice_retry_seconds": 0}
    if mode == "webhook":
        overrides |= {"public_base_url": "https://bot.example.com", "webhook_secret": WEBHOOK_SECRET}
    runtime: Runtime = await start_app(make_settings(**overrides))
    await _startup_sweep_done(runtime)
    return runtime


async def _startup_sweep_done(runtime: Runtime) -> None:
    """The app sweeps once when it starts (then hourly here): the tests sweep by themselves after
    that, so that they know what the sweep found."""

    async def done() -> bool:
        return runtime.services.recovery.runs >= 1

    await eventually(done)


@pytest.fixture
async def app(make_settings: Callable[..., Any], start_app: Callable[..., Any]) -> Runtime:
    return await _start(make_settings, start_app, "polling")


async def _deliver(telegram: FakeTelegramServer, runtime: Runtime, update: dict[str, Any]) -> None:
    if runtime.settings.webhook_mode:
        url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
        assert await telegram.post_webhook(url, update, secret=WEBHOOK_SECRET) == 200
    else:
        telegram.queue_update(update)


def _payment_update(
    telegram: FakeTelegramServer, runtime: Runtime, user: FakeUser, charge_id: str, package_id: str = "m"
) -> dict[str, Any]:
    package = runtime.services.prices.package(package_id)
    assert package is not None
    payload = runtime.services.payments.make_invoice_payload(user_id=user.id, package=package)
    return telegram.successful_payment_update(
        user,
        currency="XTR",
        total_amount=package.stars,
        invoice_payload=payload,
        telegram_payment_charge_id=charge_id,
    )


async def _paid(telegram: FakeTelegramServer, runtime: Runtime, user: FakeUser, charge_id: str) -> None:
    """A payment of 100 ⭐ (110 credits) is credited and thanked for."""
    telegram.queue_update(_payment_update(telegram, runtime, user, charge_id))
    await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "Thank you" in c.params["text"]
    )
    await eventually(lambda: _balance_is(runtime, user.id, 110))


async def _balance(runtime: Runtime, user_id: int) -> int:
    async with runtime.services.sessions() as session:
        return await runtime.services.ledger.get_balance(session=session, user_id=user_id)


async def _balance_is(runtime: Runtime, user_id: int, expected: int) -> bool:
    return await _balance(runtime, user_id) == expected


def _thanks(telegram: FakeTelegramServer, user: FakeUser) -> list[str]:
    """The thank-yous the user really received (failed sends don't count)."""
    return [
        c.params["text"]
        for c in telegram.calls_of("sendMessage")
        if not c.failed and c.params.get("chat_id") == user.id and "Thank you" in c.params["text"]
    ]


async def _payment(db: Database, charge_id: str) -> Payment:
    async with db.sessions() as session:
        payment = await session.scalar(select(Payment).where(Payment.telegram_payment_charge_id == charge_id))
    assert payment is not None
    return payment


async def _status_is(db: Database, charge_id: str, status: PaymentStatus) -> bool:
    return (await _payment(db, charge_id)).status == status


async def _entries(db: Database, user_id: int) -> list[tuple[EntryKind, int, str]]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(CreditEntry.kind, CreditEntry.amount, CreditEntry.idempotency_key)
            .where(CreditEntry.user_id == user_id)
            .order_by(CreditEntry.seq)
        )
        return [(row.kind, row.amount, row.idempotency_key) for row in rows]


async def _owed(db: Database) -> list[OwedMessage]:
    async with db.sessions() as session:
        return list(await session.scalars(select(OwedMessage)))


def _waiting_to_retry(notice: OwedMessage) -> bool:
    """A failed attempt is recorded: the notice is not held by an attempt under way."""
    return notice.attempts >= 1 and notice.next_attempt_at < notice.created_at + NoticeRules().lease


async def _ledger_adds_up(runtime: Runtime) -> None:
    async with runtime.services.sessions() as session:
        assert await runtime.services.ledger.verify_all(session=session) == []


# --- the thank-you -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_a_user_who_blocked_the_bot_right_after_paying_is_credited(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
    mode: str,
) -> None:
    runtime = await _start(make_settings, start_app, mode)
    user = FakeUser(id=6001, language_code="en")
    telegram.fail_nth("sendMessage", Fault.FORBIDDEN)
    await _deliver(telegram, runtime, _payment_update(telegram, runtime, user, "charge-blocked"))

    await eventually(lambda: _balance_is(runtime, user.id, 110))
    payment = await _payment(db, "charge-blocked")
    assert (payment.status, payment.credits) == (PaymentStatus.PAID, 110)
    await telegram.wait_for_call("sendMessage", lambda c: c.failed and c.params.get("chat_id") == user.id)

    async def given_up() -> bool:
        return [n.given_up_at is not None for n in await _owed(db)] == [True]

    await eventually(given_up)
    [notice] = await _owed(db)
    assert (notice.chat_id, notice.text, notice.attempts, notice.sent_at) == (user.id, THANKS, 1, None)
    # Blocked is final: the sweep doesn't try again.
    await runtime.services.recovery.run_once()
    assert telegram.calls_of("sendMessage")[-1].failed and _thanks(telegram, user) == []
    assert await _entries(db, user.id) == [(EntryKind.TOPUP, 110, "payment:charge-blocked")]
    await _ledger_adds_up(runtime)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.RESET])
async def test_a_thank_you_that_failed_arrives_once_after_the_sweep(
    telegram: FakeTelegramServer, app: Runtime, db: Database, fault: Fault
) -> None:
    patient, app.bot.session.timeout = app.bot.session.timeout, 1  # a hung sendMessage gives up quickly
    user = FakeUser(id=6002, language_code="en")
    telegram.fail_nth("sendMessage", fault)
    update = _payment_update(telegram, app, user, "charge-flaky")
    telegram.queue_update(update)

    async def failed_once() -> bool:
        owed = await _owed(db)
        return len(owed) == 1 and (owed[0].sent_at is not None or _waiting_to_retry(owed[0]))

    await eventually(failed_once)  # the failure is recorded: no attempt under way
    # The retry must get through: a second give-up after 1 s on a loaded machine would be no fault
    # of the bot's.
    app.bot.session.timeout = patient
    assert await _balance(app, user.id) == 110
    assert any(c.failed for c in telegram.calls_of("sendMessage"))

    await app.services.recovery.run_once()
    assert _thanks(telegram, user) == [THANKS]
    [notice] = await _owed(db)
    assert notice.sent_at is not None and notice.attempts == 2

    # The payment delivered again (the same update, and another carrying the same charge) and
    # more sweeps: nothing more is credited or sent.
    telegram.queue_update(update)
    telegram.queue_update(_payment_update(telegram, app, user, "charge-flaky"))
    await say(telegram, user, "/balance")
    await app.services.recovery.run_once()
    assert _thanks(telegram, user) == [THANKS]
    assert await _balance(app, user.id) == 110
    assert await _entries(db, user.id) == [(EntryKind.TOPUP, 110, "payment:charge-flaky")]
    await _ledger_adds_up(app)


async def test_a_notice_is_given_up_after_the_last_attempt(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    runtime: Runtime = await start_app(make_settings(notice_retry_seconds=0, notice_max_attempts=2))
    await _startup_sweep_done(runtime)
    user = FakeUser(id=6003, language_code="en")
    telegram.fail_nth("sendMessage", Fault.SERVER_ERROR, n=1)
    telegram.fail_nth("sendMessage", Fault.SERVER_ERROR, n=2)
    telegram.queue_update(_payment_update(telegram, runtime, user, "charge-lost"))
    await eventually(lambda: _balance_is(runtime, user.id, 110))

    async def failed() -> bool:
        owed = await _owed(db)
        return len(owed) == 1 and (_waiting_to_retry(owed[0]) or owed[0].given_up_at is not None)

    await eventually(failed)
    await runtime.services.recovery.run_once()
    await runtime.services.recovery.run_once()
    [notice] = await _owed(db)
    assert (notice.attempts, notice.sent_at, notice.given_up_at is not None) == (2, None, True)
    assert _thanks(telegram, user) == []
    assert await _balance(runtime, user.id) == 110
    await _ledger_adds_up(runtime)


# --- admin refunds -------------------------------------------------------------------------------


async def test_a_refund_stands_when_the_admins_reply_fails(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6101, language_code="en")
    await _paid(telegram, app, user, "charge-r1")
    telegram.fail_nth("sendMessage", Fault.FORBIDDEN)  # the reply to the admin's /refund
    telegram.queue_update(telegram.message_update(ADMIN, "/refund charge-r1"))

    failed = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == ADMIN.id)
    assert failed.failed and failed.params["text"] == "Refunded 100 ⭐; 110 credits taken back."
    await eventually(lambda: _status_is(db, "charge-r1", PaymentStatus.REFUNDED))
    assert telegram.refunded("charge-r1")
    assert len(telegram.calls_of("refundStarPayment")) == 1
    assert await _balance(app, user.id) == 0
    assert await _entries(db, user.id) == [
        (EntryKind.TOPUP, 110, "payment:charge-r1"),
        (EntryKind.REFUND, -110, "refund:charge-r1"),
    ]
    reply = await say(telegram, ADMIN, "/refund charge-r1")
    assert reply.params["text"] == "This payment was already refunded."
    await _ledger_adds_up(app)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.RESET])
async def test_a_refund_without_an_answer_is_finished_by_the_sweep(
    telegram: FakeTelegramServer, app: Runtime, db: Database, fault: Fault
) -> None:
    user = FakeUser(id=6102, language_code="en")
    await _paid(telegram, app, user, "charge-r2")
    telegram.fail_nth("refundStarPayment", fault)

    patient, app.bot.session.timeout = app.bot.session.timeout, 1  # a hung refund gives up quickly
    reply = await say(telegram, ADMIN, "/refund charge-r2")
    app.bot.session.timeout = patient  # the sweep's retry must get through, however loaded the machine
    assert reply.params["text"] == (
        "110 credits taken back; Telegram hasn't confirmed the refund of 100 ⭐ yet."
        " It is retried automatically; if Telegram stays silent, the refund waits for you in /admin, where /refund asks again."
    )
    payment = await _payment(db, "charge-r2")
    assert payment.status == PaymentStatus.REFUNDING
    assert not telegram.refunded("charge-r2")
    assert await _balance(app, user.id) == 0
    again = await say(telegram, ADMIN, "/refund charge-r2")
    assert again.params["text"].startswith("A refund of this payment is under way")

    assert (await app.services.recovery.run_once())["billing.refunds"] == 1
    assert telegram.refunded("charge-r2")
    assert (await _payment(db, "charge-r2")).status == PaymentStatus.REFUNDED
    assert (await app.services.recovery.run_once())["billing.refunds"] == 0
    assert await _balance(app, user.id) == 0
    assert await _entries(db, user.id) == [
        (EntryKind.TOPUP, 110, "payment:charge-r2"),
        (EntryKind.REFUND, -110, "refund:charge-r2"),
    ]
    await _ledger_adds_up(app)


async def test_a_refund_the_sweep_gave_up_on_is_asked_again_by_the_admins_refund(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(make_settings(admin_ids=str(ADMIN.id), refund_max_asks=1))
    await _startup_sweep_done(app)
    user = FakeUser(id=6109, language_code="en")
    await _paid(telegram, app, user, "charge-r9")
    telegram.fail_nth("refundStarPayment", Fault.SERVER_ERROR)
    await say(telegram, ADMIN, "/refund charge-r9")  # its one ask allowed, unanswered: given up
    assert (await _payment(db, "charge-r9")).refund_given_up_at is not None
    assert (await app.services.recovery.run_once())["billing.refunds"] == 0
    assert not telegram.refunded("charge-r9")

    panel = await say(telegram, ADMIN, "/admin")
    press(telegram, ADMIN, "adm:stats", panel)
    stats = await telegram.wait_for_call("sendMessage", lambda c: "Statistics" in c.params["text"])
    assert stats.params["text"].endswith(
        "/refund with the charge id asks Telegram again:\n<code>/refund charge-r9</code>"
    )
    reply = await say(telegram, ADMIN, "/refund charge-r9")
    assert reply.params["text"] == "Refunded 100 ⭐; 110 credits taken back."
    assert telegram.refunded("charge-r9")
    assert (await _payment(db, "charge-r9")).status == PaymentStatus.REFUNDED
    assert await _entries(db, user.id) == [  # the credits were taken back once
        (EntryKind.TOPUP, 110, "payment:charge-r9"),
        (EntryKind.REFUND, -110, "refund:charge-r9"),
    ]
    await _ledger_adds_up(app)


async def test_a_refund_whose_answer_was_lost_ends_refunded_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    """Telegram refunded, but the answer never came back: asked again, it says
    CHARGE_ALREADY_REFUNDED, which ends the refund too."""
    user = FakeUser(id=6103, language_code="en")
    await _paid(telegram, app, user, "charge-r3")
    telegram.fail_nth("refundStarPayment", Fault.SERVER_ERROR)
    await say(telegram, ADMIN, "/refund charge-r3")
    assert (await _payment(db, "charge-r3")).status == PaymentStatus.REFUNDING
    # The Stars went back meanwhile (the lost call got through after all).
    telegram.queue_update(
        telegram.refunded_payment_update(user, telegram_payment_charge_id="charge-r3", total_amount=100)
    )
    await eventually(lambda: _status_is(db, "charge-r3", PaymentStatus.REFUNDED))
    await app.services.recovery.run_once()
    assert (await _payment(db, "charge-r3")).refund_shortfall == 0
    assert await _balance(app, user.id) == 0
    assert [e[1] for e in await _entries(db, user.id)] == [110, -110]  # not taken twice
    await _ledger_adds_up(app)


async def test_charge_already_refunded_from_telegram_ends_the_refund(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6104, language_code="en")
    await _paid(telegram, app, user, "charge-r4")
    telegram.fail_next(
        "refundStarPayment", 400, description="Bad Request: CHARGE_ALREADY_REFUNDED", retry_after=None
    )
    reply = await say(telegram, ADMIN, "/refund charge-r4")
    assert reply.params["text"] == "Refunded 100 ⭐; 110 credits taken back."
    assert (await _payment(db, "charge-r4")).status == PaymentStatus.REFUNDED
    assert await _balance(app, user.id) == 0
    await _ledger_adds_up(app)


async def test_a_refused_refund_gives_the_credits_back_and_can_be_tried_again(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6105, language_code="en")
    await _paid(telegram, app, user, "charge-r5")
    telegram.fail_next(
        "refundStarPayment", 400, description="Bad Request: CHARGE_NOT_FOUND", retry_after=None
    )
    reply = await say(telegram, ADMIN, "/refund charge-r5")
    assert reply.params["text"] == (
        "Telegram refused the refund: Bad Request: CHARGE_NOT_FOUND."
        " The credits were given back; the payment stays paid."
    )
    assert (await _payment(db, "charge-r5")).status == PaymentStatus.PAID
    assert await _balance(app, user.id) == 110

    reply = await say(telegram, ADMIN, "/refund charge-r5")
    assert reply.params["text"] == "Refunded 100 ⭐; 110 credits taken back."
    assert telegram.refunded("charge-r5")
    payment = await _payment(db, "charge-r5")
    assert (payment.status, payment.refund_attempts) == (PaymentStatus.REFUNDED, 2)
    assert await _entries(db, user.id) == [
        (EntryKind.TOPUP, 110, "payment:charge-r5"),
        (EntryKind.REFUND, -110, "refund:charge-r5"),
        (EntryKind.REFUND, 110, "refund-back:charge-r5"),
        (EntryKind.REFUND, -110, "refund:charge-r5#2"),
    ]
    await _ledger_adds_up(app)


async def test_a_crash_before_telegram_is_asked_is_finished_by_the_sweep(
    telegram: FakeTelegramServer, app: Runtime, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = FakeUser(id=6106, language_code="en")
    await _paid(telegram, app, user, "charge-r6")

    async def crash(**_: Any) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(app.services.payments, "complete_refund", crash)
    telegram.queue_update(telegram.message_update(ADMIN, "/refund charge-r6"))
    await eventually(lambda: _status_is(db, "charge-r6", PaymentStatus.REFUNDING))
    await telegram.wait_until_handled()
    assert telegram.calls_of("refundStarPayment") == []
    assert await _balance(app, user.id) == 0  # the intent is committed with the debit
    monkeypatch.undo()

    await app.services.recovery.run_once()
    assert telegram.refunded("charge-r6")
    assert (await _payment(db, "charge-r6")).status == PaymentStatus.REFUNDED
    assert len(telegram.calls_of("refundStarPayment")) == 1
    await _ledger_adds_up(app)


# --- refunds made outside the bot ----------------------------------------------------------------


async def test_a_refund_made_outside_the_bot_takes_the_credits_back_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6201, language_code="en")
    await _paid(telegram, app, user, "charge-o1")
    refunded = telegram.refunded_payment_update(
        user, telegram_payment_charge_id="charge-o1", total_amount=100
    )
    telegram.queue_update(refunded)
    telegram.queue_update(refunded)  # delivered again
    telegram.queue_update(
        telegram.refunded_payment_update(user, telegram_payment_charge_id="charge-o1", total_amount=100)
    )
    await eventually(lambda: _status_is(db, "charge-o1", PaymentStatus.REFUNDED))
    await say(telegram, user, "/balance")
    payment = await _payment(db, "charge-o1")
    assert (payment.refund_shortfall, payment.refunded_at is not None) == (0, True)
    assert await _balance(app, user.id) == 0
    assert await _entries(db, user.id) == [
        (EntryKind.TOPUP, 110, "payment:charge-o1"),
        (EntryKind.REFUND, -110, "refund:charge-o1"),
    ]
    # The admin can't refund it again: the bot knows, and doesn't ask Telegram.
    reply = await say(telegram, ADMIN, "/refund charge-o1")
    assert reply.params["text"] == "This payment was already refunded."
    assert telegram.calls_of("refundStarPayment") == []
    await _ledger_adds_up(app)


async def test_a_refund_made_outside_the_bot_after_spending_keeps_the_shortfall(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6202, language_code="en")
    await _paid(telegram, app, user, "charge-o2")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(
            session=session, user_id=user.id, amount=30, key="spend:o2", description="ledger.charge"
        )
    telegram.queue_update(
        telegram.refunded_payment_update(user, telegram_payment_charge_id="charge-o2", total_amount=100)
    )
    await eventually(lambda: _status_is(db, "charge-o2", PaymentStatus.REFUNDED))
    payment = await _payment(db, "charge-o2")
    assert payment.refund_shortfall == 30
    assert await _balance(app, user.id) == 0
    assert [(kind, amount) for kind, amount, _ in await _entries(db, user.id)] == [
        (EntryKind.TOPUP, 110),
        (EntryKind.CHARGE, -30),
        (EntryKind.REFUND, -80),
    ]
    await _ledger_adds_up(app)


async def test_a_refund_outside_the_bot_of_a_spent_payment_takes_nothing(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6203, language_code="en")
    await _paid(telegram, app, user, "charge-o3")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(
            session=session, user_id=user.id, amount=110, key="spend:o3", description="ledger.charge"
        )
    telegram.queue_update(
        telegram.refunded_payment_update(user, telegram_payment_charge_id="charge-o3", total_amount=100)
    )
    await eventually(lambda: _status_is(db, "charge-o3", PaymentStatus.REFUNDED))
    assert (await _payment(db, "charge-o3")).refund_shortfall == 110
    assert await _balance(app, user.id) == 0
    assert [kind for kind, _, _ in await _entries(db, user.id)] == [EntryKind.TOPUP, EntryKind.CHARGE]
    await _ledger_adds_up(app)


async def test_a_blocked_users_refund_made_outside_the_bot_is_recorded(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=6204, language_code="en")
    await _paid(telegram, app, user, "charge-o4")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.admin.set_blocked(session=session, user_id=user.id, blocked=True)
    telegram.queue_update(
        telegram.refunded_payment_update(user, telegram_payment_charge_id="charge-o4", total_amount=100)
    )
    await eventually(lambda: _status_is(db, "charge-o4", PaymentStatus.REFUNDED))
    assert await _balance(app, user.id) == 0
    await _ledger_adds_up(app)
