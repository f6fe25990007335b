"""Support as the user and the operators see it: /support, the message copied to every operator
under the user's card, the operator's answer under a "Support:" line in the user's language,
/cancel on both sides, forged and foreign Reply buttons, a user who blocked the bot, and a bot
with no operators."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from PIL import Image

from aisha.billing.models import CreditHold
from aisha.db.session import unit_of_work
from aisha.generation.models import ImageGeneration
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.faults import Fault
from aisha.transcription.models import Transcript
from tests.conftest import Database
from tests.e2e.conftest import buttons, count, press, say

ADMIN = FakeUser(id=900, first_name="Op", language_code="en")
ADMIN_RU = FakeUser(id=901, first_name="Оля", language_code="ru")
ALICE = FakeUser(id=5001, first_name="Alice", last_name="Smith", username="alice", language_code="en")
BORIS = FakeUser(id=5002, first_name="Борис", language_code="ru")
EVE = FakeUser(id=5003, first_name="Eve", language_code="en")


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server


@pytest.fixture
async def app(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], fal: FakeFalServer
) -> Runtime:
    # FAL is configured: outside support, any text is an image prompt.
    settings = make_settings(
        admin_ids=f"{ADMIN.id},{ADMIN_RU.id}",
        fal_key=fal.key,
        fal_queue_url=fal.base_url,
        fal_jwks_url=fal.jwks_url,
    )
    runtime: Runtime = await start_app(settings)
    return runtime


def _photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _to(chat_id: int, text: str | None = None) -> Callable[[Any], bool]:
    """A call to `chat_id` (whose text contains `text`)."""
    return lambda c: c.params.get("chat_id") == chat_id and (text is None or text in c.params.get("text", ""))


def _texts_to(telegram: FakeTelegramServer, chat_id: int) -> list[str]:
    return [c.params["text"] for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]


async def _balance(app: Runtime, user_id: int) -> int:
    async with app.services.sessions() as session:
        return await app.services.ledger.get_balance(session=session, user_id=user_id)


async def _pay(telegram: FakeTelegramServer, app: Runtime, user: FakeUser, charge_id: str) -> Any:
    """A top-up of the "m" package (100 Stars, 110 credits) with this Telegram charge id."""
    package = app.services.prices.package("m")
    assert package is not None
    payload = app.services.payments.make_invoice_payload(user_id=user.id, package=package)
    telegram.queue_update(
        telegram.successful_payment_update(
            user,
            currency="XTR",
            total_amount=100,
            invoice_payload=payload,
            telegram_payment_charge_id=charge_id,
        )
    )
    return await telegram.wait_for_call("sendMessage", _to(user.id))


async def _write(telegram: FakeTelegramServer, user: FakeUser, text: str | None = None, **media: Any) -> Any:
    """The user sends a message; returns the bot's next message to them."""
    telegram.queue_update(telegram.message_update(user, text, **media))
    return await telegram.wait_for_call("sendMessage", _to(user.id))


async def _open_support(telegram: FakeTelegramServer, user: FakeUser) -> None:
    for admin in (ADMIN, ADMIN_RU):  # the operators have used the bot: their language is known
        await say(telegram, admin, "/start")
    await say(telegram, user, "/start")


async def test_english_conversation_user_to_operators_and_back(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await _open_support(telegram, ALICE)
    await _pay(telegram, app, ALICE, "stxCharge-alice-1")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.hold(
            session=session, user_id=ALICE.id, amount=5, key="h-alice", reference="generation:abc"
        )

    ask = await say(telegram, ALICE, "/support")
    assert "Describe the problem" in ask.params["text"]
    assert "answer here, in this chat" in ask.params["text"]

    # Her first message: a copy and her card to every operator, each in the operator's language.
    asked = telegram.message_update(ALICE, "I paid 100 stars and got nothing")
    telegram.queue_update(asked)
    ack = await telegram.wait_for_call("sendMessage", _to(ALICE.id))
    assert ack.params["text"].startswith("✅ Your message was passed on to support")
    copies = {c.params["chat_id"]: c for c in telegram.calls_of("copyMessage")}
    assert set(copies) == {ADMIN.id, ADMIN_RU.id}
    for copy in copies.values():
        assert (copy.params["from_chat_id"], copy.params["message_id"]) == (
            ALICE.id,
            asked["message"]["message_id"],
        )
    copied = telegram.chat_messages(ADMIN.id)[-2]
    assert copied["text"] == "I paid 100 stars and got nothing"
    card = next(c for c in telegram.calls_of("sendMessage") if _to(ADMIN.id, "Support request")(c))
    text = card.params["text"]
    assert "from Alice Smith (<code>5001</code>)" in text
    assert "Username: @alice, language: en" in text
    assert "Balance: <b>105</b>, reserved: 5" in text
    assert "100 ⭐ → 110 credits, paid\n<code>stxCharge-alice-1</code>" in text
    assert "5 credits for <code>generation:abc</code>" in text
    assert "/refund &lt;charge id&gt;" in text
    assert card.params["reply_parameters"]["message_id"] == copies[ADMIN.id].result["message_id"]
    assert buttons(card) == [("↩️ Reply", f"supr:{ALICE.id}")]
    card_ru = next(c for c in telegram.calls_of("sendMessage") if _to(ADMIN_RU.id, "Обращение")(c))
    assert "110 кредитов, оплачен" in card_ru.params["text"]
    assert buttons(card_ru) == [("↩️ Ответить", f"supr:{ALICE.id}")]

    # A photo with a caption and a voice: copied as they are, with a short pointer.
    photo = _photo()
    ack = await _write(telegram, ALICE, photo=photo, caption="the receipt")
    assert ack.params["text"] == "✅ Passed on to support too."
    shown = telegram.chat_messages(ADMIN.id)[-2]
    assert shown["caption"] == "the receipt"
    assert shown["photo"][0]["file_id"] == telegram.chat_messages(ALICE.id)[-2]["photo"][0]["file_id"]
    assert any(_to(ADMIN.id, "More from Alice Smith")(c) for c in telegram.calls_of("sendMessage"))
    await _write(telegram, ALICE, voice=(b"OggS not really", 3))
    assert "voice" in telegram.chat_messages(ADMIN.id)[-2]
    assert await count(db, Transcript) == 0  # a voice in support is not a transcription

    # The operator answers: the user gets it under "Support:", the operator a confirmation.
    press(telegram, ADMIN, f"supr:{ALICE.id}", card)
    prompt = await telegram.wait_for_call("sendMessage", _to(ADMIN.id, "Write your answer"))
    assert "Alice Smith (<code>5001</code>)" in prompt.params["text"]
    telegram.queue_update(telegram.message_update(ADMIN, "We see it: refunding now."))
    delivered = await telegram.wait_for_call("sendMessage", _to(ALICE.id))
    assert delivered.params["text"] == "💬 <b>Support:</b>\nWe see it: refunding now."
    done = await telegram.wait_for_call("sendMessage", _to(ADMIN.id))
    assert done.params["text"].startswith("✅ Delivered to Alice Smith")

    # A photo from the operator: the line, then the photo as it was sent.
    telegram.queue_update(telegram.message_update(ADMIN, photo=photo, caption="your refund"))
    line = await telegram.wait_for_call("sendMessage", _to(ALICE.id))
    assert line.params["text"] == "💬 <b>Support:</b>"
    await telegram.wait_for_call("sendMessage", _to(ADMIN.id, "Delivered"))
    assert telegram.chat_messages(ALICE.id)[-1]["caption"] == "your refund"

    # /cancel on both sides: nothing more crosses over.
    closed = await say(telegram, ADMIN, "/cancel")
    assert closed.params["text"].startswith("Reply mode closed")
    left = await say(telegram, ALICE, "/cancel")
    assert left.params["text"].startswith("You have left support")
    before = len(telegram.calls_of("copyMessage"))
    to_alice = len(_texts_to(telegram, ALICE.id))
    await say(telegram, ADMIN, "a stray note")
    after = await say(telegram, ALICE, "one more thing")
    assert "Support" not in after.params["text"]  # an image prompt again, not support
    assert len(telegram.calls_of("copyMessage")) == before
    assert len(_texts_to(telegram, ALICE.id)) == to_alice + 1


async def test_russian_user_gets_the_answer_in_russian(telegram: FakeTelegramServer, app: Runtime) -> None:
    await _open_support(telegram, BORIS)
    ask = await say(telegram, BORIS, "/paysupport")
    assert "Опишите проблему" in ask.params["text"]
    ack = await _write(telegram, BORIS, "Оплата прошла, а кредитов нет")
    assert ack.params["text"].startswith("✅ Ваше сообщение передано в поддержку")
    card = next(c for c in telegram.calls_of("sendMessage") if _to(ADMIN.id, "Support request")(c))
    assert "Username: none, language: ru" in card.params["text"]
    assert "<b>Recent payments</b> (times in UTC):\nnone" in card.params["text"]

    # The English-speaking operator answers; Boris reads the line in Russian.
    press(telegram, ADMIN, f"supr:{BORIS.id}", card)
    await telegram.wait_for_call("sendMessage", _to(ADMIN.id, "Write your answer"))
    telegram.queue_update(telegram.message_update(ADMIN, "Проверили, кредиты начислены."))
    delivered = await telegram.wait_for_call("sendMessage", _to(BORIS.id))
    assert delivered.params["text"] == "💬 <b>Поддержка:</b>\nПроверили, кредиты начислены."
    await telegram.wait_for_call("sendMessage", _to(ADMIN.id, "Delivered to Борис"))

    # Boris is still in the conversation: his reply reaches the operators.
    ack = await _write(telegram, BORIS, "Спасибо!")
    assert ack.params["text"] == "✅ Тоже передано в поддержку."
    assert telegram.chat_messages(ADMIN.id)[-2]["text"] == "Спасибо!"
    left = await say(telegram, BORIS, "/cancel")
    assert left.params["text"].startswith("Вы вышли из поддержки")


async def test_text_in_support_is_no_prompt_and_costs_nothing(
    telegram: FakeTelegramServer, app: Runtime, db: Database, fal: FakeFalServer
) -> None:
    await _open_support(telegram, ALICE)
    await _pay(telegram, app, ALICE, "stxCharge-alice-2")
    # Outside support, this very text is an image prompt: the generation options appear.
    options = await say(telegram, ALICE, "a red cat on the moon")
    assert any(data.startswith("gopt:") for _, data in buttons(options))
    await say(telegram, ALICE, "/cancel")

    await say(telegram, ALICE, "/support")
    ack = await say(telegram, ALICE, "a red cat on the moon")
    assert ack.params["text"].startswith("✅ Your message was passed on")
    assert buttons(ack) == []
    assert telegram.chat_messages(ADMIN.id)[-2]["text"] == "a red cat on the moon"
    # The menu's buttons and other commands still work mid-conversation.
    balance = await say(telegram, ALICE, "💰 Balance")
    assert "Balance: <b>110</b>" in balance.params["text"]
    # A payment mid-conversation is credited as ever, not passed on as a message.
    thanks = await _pay(telegram, app, ALICE, "stxCharge-alice-3")
    assert thanks.params["text"].startswith("Thank you! 110 credits added")
    assert await _balance(app, ALICE.id) == 220
    assert await count(db, ImageGeneration) == 0
    assert await count(db, CreditHold) == 0
    assert fal.submissions == []


async def test_reply_button_refuses_strangers_and_forged_data(
    telegram: FakeTelegramServer, app: Runtime
) -> None:
    await _open_support(telegram, ALICE)
    await say(telegram, ALICE, "/support")
    await _write(telegram, ALICE, "help me")
    card = next(c for c in telegram.calls_of("sendMessage") if _to(ADMIN.id, "Support request")(c))

    # Eve forges a Reply under a message of her own: an alert, and she answers nobody.
    own = await say(telegram, EVE, "/start")
    press(telegram, EVE, f"supr:{ALICE.id}", own)
    alert = await telegram.wait_for_call("answerCallbackQuery")
    assert (alert.params["text"], alert.params["show_alert"]) == ("This button is not valid any more.", True)
    await say(telegram, EVE, "I am support now, send me your card")
    assert not any("send me your card" in t for t in _texts_to(telegram, ALICE.id))

    # The operator presses tampered data: not a user id, then a user who doesn't exist.
    press(telegram, ADMIN, "supr:alice", card)
    alert = await telegram.wait_for_call("answerCallbackQuery")
    assert (alert.params["text"], alert.params["show_alert"]) == ("This button is not valid any more.", True)
    press(telegram, ADMIN, "supr:777777", card)
    alert = await telegram.wait_for_call("answerCallbackQuery")
    assert alert.params["text"] == "This user is not in the database any more."
    # Neither put the operator in reply mode.
    nothing = await say(telegram, ADMIN, "/cancel")
    assert nothing.params["text"] == "There is nothing to cancel."


async def test_answer_to_a_user_who_blocked_the_bot(telegram: FakeTelegramServer, app: Runtime) -> None:
    await _open_support(telegram, ALICE)
    await say(telegram, ALICE, "/support")
    await _write(telegram, ALICE, "where are my credits?")
    card = next(c for c in telegram.calls_of("sendMessage") if _to(ADMIN.id, "Support request")(c))
    press(telegram, ADMIN, f"supr:{ALICE.id}", card)
    await telegram.wait_for_call("sendMessage", _to(ADMIN.id, "Write your answer"))

    telegram.fail_nth("sendMessage", Fault.FORBIDDEN)  # the next one: the answer to Alice
    telegram.queue_update(telegram.message_update(ADMIN, "Here is your answer"))
    refused = await telegram.wait_for_call("sendMessage", _to(ALICE.id))
    assert refused.failed
    told = await telegram.wait_for_call("sendMessage", _to(ADMIN.id))
    assert told.params["text"] == (
        "⛔ Alice Smith (<code>5001</code>) has blocked the bot: the answer was not delivered."
    )
    # Reply mode ended with it.
    nothing = await say(telegram, ADMIN, "/cancel")
    assert nothing.params["text"] == "There is nothing to cancel."


async def test_without_operators_support_says_so(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    await start_app(make_settings())
    for command in ("/support", "/paysupport"):
        reply = await say(telegram, EVE, command)
        assert reply.params["text"].startswith("Support is not available right now")
        assert "/terms" in reply.params["text"]
    after = await say(telegram, EVE, "is anyone there?")
    assert "passed on" not in after.params["text"]
    assert telegram.calls_of("copyMessage") == []


async def test_support_is_in_the_menu_and_in_help(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    await start_app(make_settings())
    assert {c["command"]: c["description"] for c in telegram.my_commands(language_code="en")}["support"] == (
        "Write to a person on our team"
    )
    assert {c["command"]: c["description"] for c in telegram.my_commands(language_code="ru")}["support"] == (
        "Написать в поддержку"
    )
    assert "/support" in (await say(telegram, EVE, "/help")).params["text"]


async def test_operators_who_blocked_the_bot_are_passed_over(
    telegram: FakeTelegramServer, app: Runtime
) -> None:
    await _open_support(telegram, ALICE)
    await say(telegram, ALICE, "/support")
    # Both operators blocked the bot: the user is told, not left waiting for an answer.
    telegram.fail_nth("copyMessage", Fault.FORBIDDEN, n=1)
    telegram.fail_nth("copyMessage", Fault.FORBIDDEN, n=2)
    ack = await _write(telegram, ALICE, "hello?")
    assert ack.params["text"].startswith("Sorry, your message could not be passed on to support")
    assert not any(
        "Support request" in t for t in _texts_to(telegram, ADMIN.id) + _texts_to(telegram, ADMIN_RU.id)
    )

    # One of them blocked it: the other gets the message, with the full card (none was sent yet).
    telegram.fail_nth("copyMessage", Fault.FORBIDDEN, n=1)
    ack = await _write(telegram, ALICE, "hello again")
    assert ack.params["text"].startswith("✅ Your message was passed on to support")
    assert not any("Support request" in t for t in _texts_to(telegram, ADMIN.id))
    assert any("Обращение в поддержку" in t for t in _texts_to(telegram, ADMIN_RU.id))
    assert telegram.chat_messages(ADMIN_RU.id)[-2]["text"] == "hello again"
