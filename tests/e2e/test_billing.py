"""Credits as a user sees them: top-up with Stars, /balance with history, refusals, refunds."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from aisha.billing.models import CreditEntry, EntryKind, Payment, PaymentStatus
from aisha.db.session import unit_of_work
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from tests.conftest import Database
from tests.e2e.conftest import buttons, count, eventually, press, say

ADMIN = FakeUser(id=900, first_name="Op", language_code="en")


async def _balance_is(runtime: Runtime, user_id: int, expected: int) -> bool:
    return await _balance(None, runtime, user_id) == expected


async def _balance(db: Database | None, runtime: Runtime, user_id: int) -> int:
    async with runtime.services.sessions() as session:
        return await runtime.services.ledger.get_balance(session=session, user_id=user_id)


@pytest.fixture
async def app(make_settings: Callable[..., Any], start_app: Callable[..., Any]) -> Runtime:
    runtime: Runtime = await start_app(make_settings(admin_ids=str(ADMIN.id)))
    return runtime


async def _top_up(telegram: FakeTelegramServer, user: FakeUser, package: str = "m") -> tuple[str, Any]:
    """Goes through /topup → package button → invoice → pre-checkout; returns the payload."""
    menu = await say(telegram, user, "/topup")
    assert ("100 ⭐ → 110 credits", f"buy:{package}") in buttons(menu) or package != "m"
    press(telegram, user, f"buy:{package}", menu)
    invoice = await telegram.wait_for_call("sendInvoice", lambda c: c.params.get("chat_id") == user.id)
    payload = invoice.params["payload"]
    telegram.queue_update(
        telegram.pre_checkout_update(
            user, currency="XTR", total_amount=invoice.params["prices"][0]["amount"], invoice_payload=payload
        )
    )
    answer = await telegram.wait_for_call("answerPreCheckoutQuery")
    return payload, answer


async def test_top_up_with_stars_credits_once_and_shows_in_balance(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=5001, first_name="Alice", language_code="en")
    payload, answer = await _top_up(telegram, user)
    invoice = telegram.calls_of("sendInvoice")[-1]
    assert invoice.params["currency"] == "XTR"
    assert invoice.params.get("provider_token", "") == ""  # Stars need no provider
    assert invoice.params["prices"][0]["amount"] == 100
    assert invoice.params["title"] == "110 credits"
    assert answer.params["ok"] is True

    paid = telegram.successful_payment_update(
        user, currency="XTR", total_amount=100, invoice_payload=payload, telegram_payment_charge_id="charge-1"
    )
    telegram.queue_update(paid)
    telegram.queue_update(paid)  # the same update again
    # And a second update carrying the same charge: credited once all the same.
    again = telegram.successful_payment_update(
        user, currency="XTR", total_amount=100, invoice_payload=payload, telegram_payment_charge_id="charge-1"
    )
    telegram.queue_update(again)
    thanks = await telegram.wait_for_call("sendMessage", lambda c: "Thank you" in c.params["text"])
    assert thanks.params["text"] == "Thank you! 110 credits added. Your balance: <b>110</b>."
    await telegram.wait_until_handled(paid, again)
    assert len([c for c in telegram.calls_of("sendMessage") if "Thank you" in c.params["text"]]) == 1
    assert await _balance(db, app, user.id) == 110
    assert await count(db, Payment) == 1
    assert await count(db, CreditEntry, CreditEntry.kind == EntryKind.TOPUP) == 1

    balance = await say(telegram, user, "/balance")
    text = balance.params["text"]
    assert "💰 Balance: <b>110</b> credits" in text
    assert "<b>+110</b>  Top-up: 100 ⭐" in text
    assert ("⭐ Top up", "topup") in [(label, data.split(":")[0]) for label, data in buttons(balance)]


async def test_pre_checkout_with_a_changed_amount_is_refused(
    telegram: FakeTelegramServer, app: Runtime
) -> None:
    user = FakeUser(id=5002, language_code="ru")
    await say(telegram, user, "/start")
    payload = app.services.payments.make_invoice_payload(
        user_id=user.id, package=app.services.prices.packages[1]
    )
    telegram.queue_update(
        telegram.pre_checkout_update(user, currency="XTR", total_amount=1, invoice_payload=payload)
    )
    answer = await telegram.wait_for_call("answerPreCheckoutQuery")
    assert answer.params["ok"] is False
    assert answer.params["error_message"] == "Цена пакета изменилась. Выберите заново через /topup."


async def test_pre_checkout_for_another_users_invoice_is_refused(
    telegram: FakeTelegramServer, app: Runtime
) -> None:
    user = FakeUser(id=5003, language_code="en")
    await say(telegram, user, "/start")
    package = app.services.prices.packages[0]
    payload = app.services.payments.make_invoice_payload(user_id=424242, package=package)
    telegram.queue_update(
        telegram.pre_checkout_update(
            user, currency="XTR", total_amount=package.stars, invoice_payload=payload
        )
    )
    answer = await telegram.wait_for_call("answerPreCheckoutQuery")
    assert answer.params["ok"] is False
    assert answer.params["error_message"] == "This invoice was made for another user."


async def test_history_pages_and_tamperedbuttons(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=5004, language_code="en")
    await say(telegram, user, "/start")
    ledger = app.services.ledger
    async with unit_of_work(app.services.sessions) as session:
        for n in range(1, 8):
            await ledger.credit(
                session=session, user_id=user.id, amount=n, key=f"test:{n}", kind=EntryKind.BONUS
            )

    first = await say(telegram, user, "/balance")
    assert "💰 Balance: <b>28</b> credits" in first.params["text"]
    assert "History</b> (1–5 of 7" in first.params["text"]
    assert "<b>+7</b>  Bonus" in first.params["text"] and "<b>+2</b>" not in first.params["text"]
    assert ("Earlier ▶", "hist:5") in buttons(first)

    press(telegram, user, "hist:5", first)
    edit = await telegram.wait_for_call("editMessageText")
    assert "History</b> (6–7 of 7" in edit.params["text"]
    assert "<b>+2</b>  Bonus" in edit.params["text"] and "<b>+1</b>  Bonus" in edit.params["text"]
    assert ("◀ Later", "hist:0") in buttons(edit)

    for forged in ("hist:-5", "hist:abc", "buy:nope", "zzz"):
        press(telegram, user, forged, first)
        alert = await telegram.wait_for_call("answerCallbackQuery", lambda c: c.params.get("show_alert"))
        assert alert.params["text"] in (
            "This button is not valid any more.",
            "This package is no longer offered. Please choose again with /topup.",
        )
    assert telegram.calls_of("sendInvoice") == []
    assert await _balance(db, app, user.id) == 28


def _statement(text: str) -> list[str]:
    """The history lines of a /balance message as read, without their dates and markup."""
    lines = [line for line in text.splitlines() if line.startswith("<code>")]
    return [re.sub(r"<[^>]+>", "", line.split("</code>", 1)[1]).strip().replace("  ", " ") for line in lines]


async def test_history_is_a_statement_with_one_line_per_operation(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    """A job's hold and its capture or release read as one line with what it finally cost; one
    still running reads as pending; top-ups and refunds stand on their own. Pages count operations."""
    user = FakeUser(id=5011, language_code="en")
    await say(telegram, user, "/start")
    ledger = app.services.ledger
    async with unit_of_work(app.services.sessions) as session:

        async def hold(ref: str, amount: int, description: str, step: str = "hold", **args: int) -> Any:
            result = await ledger.hold(
                session=session,
                user_id=user.id,
                amount=amount,
                key=f"{ref}:{step}",
                reference=ref,
                description=description,
                description_args=args,
            )
            return result.hold_id

        await ledger.credit(
            session=session,
            user_id=user.id,
            amount=100,
            key="t:topup",
            kind=EntryKind.TOPUP,
            description="ledger.topup",
            description_args={"stars": 100},
        )
        done = await hold("gen:a", 9, "generation.ledger.hold", count=3)
        await ledger.capture(
            session=session,
            hold_id=done,
            amount=6,
            key="gen:a:capture",
            description="generation.ledger.capture",
            description_args={"count": 2},
        )
        failed = await hold("transcript:b", 12, "ledger.transcription", minutes=12)
        await ledger.release(session=session, hold_id=failed, key="transcript:b:release")
        # A recording longer than its header said: the first hold goes back, a bigger one replaces it.
        short = await hold("transcript:c", 2, "ledger.transcription", minutes=2)
        await ledger.release(session=session, hold_id=short, key="transcript:c:release")
        real = await hold("transcript:c", 3, "ledger.transcription", "hold-decoded", minutes=3)
        await ledger.capture(
            session=session,
            hold_id=real,
            amount=3,
            key="transcript:c:capture",
            description="ledger.transcription_done",
        )
        await ledger.debit(
            session=session,
            user_id=user.id,
            amount=10,
            key="t:refund",
            kind=EntryKind.REFUND,
            description="ledger.payment_refund",
            description_args={"stars": 10},
        )
        await hold("gen:d", 3, "generation.ledger.hold", count=1)

    first = await say(telegram, user, "/balance")
    text = first.params["text"]
    assert "💰 Balance: <b>78</b> credits\n⏳ Reserved for jobs in progress: 3 credits" in text
    assert "History</b> (1–5 of 6" in text  # 6 operations out of 10 entries
    assert _statement(text) == [
        "−3 Image generation, 1 image — ⏳ in progress",
        "−10 Stars refunded: 10 ⭐",
        "−3 Transcription, 3 minutes",
        "0 Transcription, 12 minutes — refunded",
        "−6 Image generation, 2 images",
    ]
    assert ("Earlier ▶", "hist:5") in buttons(first)

    press(telegram, user, "hist:5", first)
    edit = await telegram.wait_for_call("editMessageText")
    assert "History</b> (6–6 of 6" in edit.params["text"]
    assert _statement(edit.params["text"]) == ["+100 Top-up: 100 ⭐"]
    assert ("◀ Later", "hist:0") in buttons(edit)

    # The history reads in the user's current language.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.users.set_language(session, telegram_id=user.id, language="ru")
    ru = (await say(telegram, user, "/balance")).params["text"]
    assert _statement(ru)[:5] == [
        "−3 Генерация: 1 изображение — ⏳ в работе",
        "−10 Возврат Stars: 10 ⭐",
        "−3 Расшифровка, 3 минуты",
        "0 Расшифровка, 12 минут — возвращено",
        "−6 Генерация: 2 изображения",
    ]


async def test_prices_are_shown_in_the_users_language(telegram: FakeTelegramServer, app: Runtime) -> None:
    prices = app.services.prices
    text = (await say(telegram, FakeUser(id=5005, language_code="ru"), "/prices")).params["text"]
    assert f"Обучение портретного аватара: {prices.avatar_portrait}" in text
    assert f"Расшифровка, за каждую начатую минуту: {prices.transcription_minute}" in text
    text = (await say(telegram, FakeUser(id=5006, language_code="en"), "/prices")).params["text"]
    assert f"One image with your avatar: {prices.image}" in text


async def test_paysupport_and_terms_answer(telegram: FakeTelegramServer, app: Runtime) -> None:
    user = FakeUser(id=5007, language_code="en")
    # /paysupport opens the support conversation (tests/e2e/test_support.py follows it through).
    assert "Describe the problem" in (await say(telegram, user, "/paysupport")).params["text"]
    assert "Terms" in (await say(telegram, user, "/terms")).params["text"]


async def test_admin_refund_takes_credits_back_only_if_still_there(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=5008, language_code="en")
    payload, _ = await _top_up(telegram, user)
    telegram.queue_update(
        telegram.successful_payment_update(
            user,
            currency="XTR",
            total_amount=100,
            invoice_payload=payload,
            telegram_payment_charge_id="charge-r",
        )
    )
    await telegram.wait_for_call("sendMessage", lambda c: "Thank you" in c.params["text"])

    # A non-admin can't refund: the command is not theirs.
    reply = await say(telegram, user, "/refund charge-r")
    assert "didn't understand" in reply.params["text"]
    assert telegram.calls_of("refundStarPayment") == []

    # The user spends some credits: the refund is refused and nothing changes.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(
            session=session, user_id=user.id, amount=20, key="spend:1", description="ledger.charge"
        )
    reply = await say(telegram, ADMIN, "/refund charge-r")
    assert reply.params["text"].startswith("Can't refund")
    assert telegram.calls_of("refundStarPayment") == []
    assert await _balance(db, app, user.id) == 90

    # Credits back: now the refund goes through, on both sides.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(
            session=session, user_id=user.id, amount=20, key="give:1", kind=EntryKind.ADJUSTMENT
        )
    reply = await say(telegram, ADMIN, "/refund charge-r")
    assert reply.params["text"] == "Refunded 100 ⭐; 110 credits taken back."
    refund = telegram.calls_of("refundStarPayment")[-1]
    assert refund.params["user_id"] == user.id and refund.params["telegram_payment_charge_id"] == "charge-r"
    await eventually(lambda: _balance_is(app, user.id, 0))
    async with db.sessions() as session:
        payment = await session.scalar(
            select(Payment).where(Payment.telegram_payment_charge_id == "charge-r")
        )
    assert payment is not None and payment.status == PaymentStatus.REFUNDED

    reply = await say(telegram, ADMIN, "/refund charge-r")
    assert reply.params["text"] == "This payment was already refunded."


async def test_refund_refused_by_telegram_gives_the_credits_back(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=5009, language_code="en")
    payload, _ = await _top_up(telegram, user, "s")
    telegram.queue_update(
        telegram.successful_payment_update(
            user,
            currency="XTR",
            total_amount=50,
            invoice_payload=payload,
            telegram_payment_charge_id="charge-x",
        )
    )
    await telegram.wait_for_call("sendMessage", lambda c: "Thank you" in c.params["text"])
    telegram.fail_next(
        "refundStarPayment",
        error_code=400,
        description="Bad Request: CHARGE_NOT_FOUND",
        retry_after=None,
    )
    reply = await say(telegram, ADMIN, "/refund charge-x")
    assert reply.params["text"] == (
        "Telegram refused the refund: Bad Request: CHARGE_NOT_FOUND."
        " The credits were given back; the payment stays paid."
    )
    assert await _balance(db, app, user.id) == 50
    async with db.sessions() as session:
        payment = await session.scalar(
            select(Payment).where(Payment.telegram_payment_charge_id == "charge-x")
        )
    assert payment is not None and payment.status == PaymentStatus.PAID


async def test_welcome_bonus_is_granted_once(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    runtime: Runtime = await start_app(make_settings(welcome_bonus=15))
    user = FakeUser(id=5010, language_code="en")
    await say(telegram, user, "/start")
    await say(telegram, user, "/start")
    balance = await say(telegram, user, "/balance")
    assert "💰 Balance: <b>15</b> credits" in balance.params["text"]
    assert "<b>+15</b>  Welcome bonus" in balance.params["text"]
    assert await _balance(db, runtime, user.id) == 15
    assert (
        await count(db, CreditEntry, CreditEntry.user_id == user.id, CreditEntry.kind == EntryKind.BONUS) == 1
    )
