"""Resume after a top-up, as a user sees it: a paid action refused for credits (or a price button
that opened the top-up) is offered again after a paid Stars invoice, one press continues it through
the same service call, and nothing is charged twice.

Payments are the fake Telegram's pre-checkout and successful_payment updates; generations go to
the fake FAL queue, whose submission shows the prompt and the avatar the press used.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from aisha.avatars.models import Avatar, AvatarPhoto, AvatarStatus, AvatarType
from aisha.avatars.service import photo_prefix
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.clock import FrozenClock
from aisha.db.models import FsmRecord
from aisha.db.session import unit_of_work
from aisha.generation.models import ImageGeneration
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalJob, FakeFalServer
from aisha.sandbox.openai import FakeOpenAIServer
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, buttons, free_port
from tests.media import face_photo

PRICE = 5  # one image with an avatar (default prices)
AVATAR_PRICE = PriceList().avatar_portrait
LORA_FILE = "avatar-lora.safetensors"
TRIGGER = "ohwxe2e0000042"


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        server.host_file(LORA_FILE, b"weights")
        yield server


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key="sk-e2e") as server:
        yield server


@pytest.fixture
async def app(
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
) -> Runtime:
    port = free_port()
    settings = make_settings(
        fal_key=fal.key,
        fal_queue_url=fal.base_url,
        fal_rest_url=fal.base_url,
        fal_jwks_url=fal.jwks_url,
        openai_api_key="sk-e2e",
        openai_base_url=openai_server.base_url,
        public_base_url=f"http://127.0.0.1:{port}",
        webhook_secret=WEBHOOK_SECRET,
        http_port=port,
    )
    fal.reachable(f"http://127.0.0.1:{port}")  # FAL fetches the training archive from us
    runtime: Runtime = await start_app(settings)
    return runtime


# --- plumbing ----------------------------------------------------------------------------------


async def _send(telegram: FakeTelegramServer, update: dict[str, Any]) -> None:
    assert await telegram.deliver(update) == 200  # answered after the update's work committed


def _sent(telegram: FakeTelegramServer, user: FakeUser, method: str = "sendMessage") -> list[Any]:
    return [c for c in telegram.calls_of(method) if c.params.get("chat_id") == user.id and c.result]


async def _say(telegram: FakeTelegramServer, user: FakeUser, text: str) -> Any:
    before = len(_sent(telegram, user))
    await _send(telegram, telegram.message_update(user, text))
    return _sent(telegram, user)[before:][-1]


async def _press(telegram: FakeTelegramServer, user: FakeUser, data: str, under: Any) -> None:
    message = next(
        m for m in telegram.chat_messages(user.id) if m.get("message_id") == under.result["message_id"]
    )
    await _send(telegram, telegram.callback_update(user, data, message=message))


def _alert(telegram: FakeTelegramServer) -> str:
    return str(telegram.calls_of("answerCallbackQuery")[-1].params.get("text", ""))


def _data(call: Any, ending: str) -> str:
    return next(data for _, data in buttons(call) if data.endswith(ending))


async def _pay(
    telegram: FakeTelegramServer,
    user: FakeUser,
    packages: Any,
    *,
    package: str = "s",
    charge: str = "charge-1",
) -> dict[str, Any]:
    """Buy `package` from the packages message: invoice, pre-checkout, then the successful payment
    (returned, to be sent again)."""
    await _press(telegram, user, f"buy:{package}", packages)
    invoice = _sent(telegram, user, "sendInvoice")[-1]
    await _send(
        telegram,
        telegram.pre_checkout_update(
            user,
            currency="XTR",
            total_amount=invoice.params["prices"][0]["amount"],
            invoice_payload=invoice.params["payload"],
        ),
    )
    assert telegram.calls_of("answerPreCheckoutQuery")[-1].params["ok"] is True
    paid = telegram.successful_payment_update(
        user,
        currency="XTR",
        total_amount=invoice.params["prices"][0]["amount"],
        invoice_payload=invoice.params["payload"],
        telegram_payment_charge_id=charge,
    )
    await _send(telegram, paid)
    return paid


def _edited(telegram: FakeTelegramServer, message: Any) -> str:
    """The text `message` was last edited into (its buttons gone with the step)."""
    edits = [
        c
        for c in telegram.calls_of("editMessageText")
        if c.params.get("message_id") == message.result["message_id"] and c.result
    ]
    return str(edits[-1].params["text"]) if edits else ""


def _offers(telegram: FakeTelegramServer, user: FakeUser) -> list[Any]:
    return [c for c in _sent(telegram, user) if any(d.startswith("resume:") for _, d in buttons(c))]


async def _balance(app: Runtime, user_id: int) -> int:
    async with app.services.sessions() as session:
        return await app.services.ledger.get_balance(session=session, user_id=user_id)


async def _holds(db: Database, user_id: int) -> list[int]:
    async with db.sessions() as session:
        rows = await session.scalars(
            select(CreditEntry.amount).where(
                CreditEntry.user_id == user_id, CreditEntry.kind == EntryKind.HOLD
            )
        )
        return list(rows)


async def _generations(db: Database, user_id: int) -> list[ImageGeneration]:
    async with db.sessions() as session:
        return list(await session.scalars(select(ImageGeneration).where(ImageGeneration.user_id == user_id)))


async def _with_avatar(
    app: Runtime, telegram: FakeTelegramServer, user: FakeUser, *, credits: int
) -> uuid.UUID:
    """A user with a ready main avatar and `credits` on the balance."""
    await _say(telegram, user, "/start")
    avatar_id = uuid.uuid4()
    async with unit_of_work(app.services.sessions) as session:
        if credits:
            await app.services.ledger.credit(
                session=session, user_id=user.id, amount=credits, key=f"test:{user.id}", kind=EntryKind.BONUS
            )
        session.add(
            Avatar(
                id=avatar_id,
                user_id=user.id,
                type=AvatarType.PORTRAIT,
                status=AvatarStatus.READY,
                name="Me",
                trigger_phrase=TRIGGER,
                is_main=True,
                lora_url=f"{app.services.settings.fal_queue_url}/files/{LORA_FILE}",
                training_config={},
            )
        )
    return avatar_id


async def _submitted(fal: FakeFalServer, n: int = 1) -> FakeFalJob:
    async with asyncio.timeout(20):
        return (await fal.wait_submissions(n))[n - 1]


# --- generation --------------------------------------------------------------------------------


async def test_a_generation_refused_for_credits_continues_after_a_top_up_with_the_same_prompt_and_avatar(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
    db: Database,
) -> None:
    user = FakeUser(id=8101, first_name="Ann", language_code="en")
    avatar_id = await _with_avatar(app, telegram, user, credits=PRICE)
    openai_server.structured_replies["image_prompt"] = {
        "prompt": "me on a night street in Rome, wet cobblestones",
        "source_language": "en",
    }
    card = await _say(telegram, user, "me in Rome at night")
    go = _data(card, ":go:")
    # The credits go elsewhere before the press: the service refuses, and remembers the card.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(session=session, user_id=user.id, amount=PRICE, key="spent")
    await _press(telegram, user, go, card)
    refusal = telegram.calls_of("editMessageText")[-1]
    assert "Not enough credits" in refusal.params["text"]
    assert [data for _, data in buttons(refusal)] == ["topup"]
    assert not fal.submissions and await _holds(db, user.id) == []

    await _press(telegram, user, "topup", card)
    packages = _sent(telegram, user)[-1]
    await _pay(telegram, user, packages)
    texts = [c.params["text"] for c in _sent(telegram, user)]
    assert texts[-2] == "Thank you! 50 credits added. Your balance: <b>50</b>."
    offer = _sent(telegram, user)[-1]
    assert offer.params["text"] == "Credits are in. Pick up where you left off:"
    [(label, data)] = buttons(offer)
    assert label == "▶ Continue: generate for 5 credits" and data.startswith("resume:gen:")

    await _press(telegram, user, data, offer)
    job = await _submitted(fal)
    assert job.payload["prompt"].startswith(f"{TRIGGER} on a night street in Rome")
    assert job.payload["loras"] == [{"path": f"{fal.base_url}/files/{LORA_FILE}", "scale": 1.0}]
    [generation] = await _generations(db, user.id)
    assert generation.prompt == "me in Rome at night" and generation.avatar_id == avatar_id
    assert await _holds(db, user.id) == [-PRICE]
    assert await _balance(app, user.id) == 50 - PRICE
    # The offer became the generation's status message.
    assert generation.config["status_message_id"] == offer.result["message_id"]


async def test_a_card_at_balance_0_opens_the_top_up_and_a_double_press_of_continue_charges_once(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=8102, first_name="Бо", language_code="ru")
    await _with_avatar(app, telegram, user, credits=0)
    card = await _say(telegram, user, "я в Риме ночью")
    top = _data(card, ":top:")
    assert ("⭐ Пополнить, чтобы создать (5 кредитов)", top) in buttons(card)
    assert not any(data.endswith(":go:") for _, data in buttons(card))

    await _press(telegram, user, top, card)  # the invoice choice, at once
    packages = _sent(telegram, user)[-1]
    assert packages.params["text"] == "Выберите пакет. Оплата в Telegram Stars."
    await _pay(telegram, user, packages)
    offer = _sent(telegram, user)[-1]
    [(label, data)] = buttons(offer)
    assert label == "▶ Продолжить: создать за 5 кредитов"

    await _press(telegram, user, data, offer)
    await _press(telegram, user, data, offer)
    assert _alert(telegram) == "Это предложение уже использовано или заменено более новым."
    await _submitted(fal)
    assert len(await _generations(db, user.id)) == 1
    assert await _holds(db, user.id) == [-PRICE]
    assert await _balance(app, user.id) == 50 - PRICE


async def test_a_replayed_payment_offers_once_and_a_balance_still_short_says_so_again(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=8103, first_name="Cy", language_code="en")
    await _with_avatar(app, telegram, user, credits=0)
    card = await _say(telegram, user, "me on a boat")
    await _press(telegram, user, _data(card, ":top:"), card)
    paid = await _pay(telegram, user, _sent(telegram, user)[-1])
    # Telegram delivers the same payment again, under a new update id: credited and offered once.
    again = dict(paid, update_id=paid["update_id"] + 1000)
    await _send(telegram, again)
    assert len(_offers(telegram, user)) == 1
    assert await _balance(app, user.id) == 50

    # The credits are spent before the press: the service refuses again and says so.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(session=session, user_id=user.id, amount=48, key="spent")
    offer = _offers(telegram, user)[0]
    await _press(telegram, user, _data(offer, ""), offer)
    refusal = telegram.calls_of("editMessageText")[-1]
    assert "Not enough credits: this costs 5, you have 2." in refusal.params["text"]
    assert [data for _, data in buttons(refusal)] == ["topup"]
    assert not fal.submissions and await _holds(db, user.id) == []


async def test_an_expired_or_tampered_continue_says_so_and_changes_nothing(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = FakeUser(id=8104, first_name="Dee", language_code="en")
    await _with_avatar(app, telegram, user, credits=0)
    card = await _say(telegram, user, "me in the snow")
    await _press(telegram, user, _data(card, ":top:"), card)
    await _pay(telegram, user, _sent(telegram, user)[-1])
    offer = _offers(telegram, user)[-1]
    data = _data(offer, "")

    await _press(telegram, user, "resume:gen:deadbeef", offer)  # not the token offered
    assert _alert(telegram) == "This offer was already used or replaced by a newer one."
    await _press(telegram, user, data.replace("resume:gen:", "resume:avatar:"), offer)  # another kind
    assert _alert(telegram) == "This offer was already used or replaced by a newer one."

    later = FrozenClock(datetime.now(UTC) + timedelta(hours=24, seconds=1))
    monkeypatch.setattr(app.services, "clock", later)
    await _press(telegram, user, data, offer)
    assert _alert(telegram) == "This offer has expired (it is kept for 24 hours). Please start again."
    assert not fal.submissions and await _generations(db, user.id) == []
    assert await _balance(app, user.id) == 50


# --- the avatar wizard -------------------------------------------------------------------------


async def _draft_with_photos(app: Runtime, telegram: FakeTelegramServer, user: FakeUser) -> uuid.UUID:
    """The wizard up to its photos (stored directly: their checks are not under test here)."""
    intro = await _say(telegram, user, "/avatar")
    await _press(telegram, user, "avt:portrait", intro)
    await _say(telegram, user, "Me in space")
    async with app.services.sessions() as session:
        avatar_id = await session.scalar(select(Avatar.id).where(Avatar.user_id == user.id))
    assert avatar_id is not None
    photos = []
    for i in range(10):
        key = f"{photo_prefix(user.id, avatar_id)}/photos/{i}.jpg"
        data = face_photo(i)
        await app.services.storage.put(key, data)
        photos.append((i, key, data))
    async with unit_of_work(app.services.sessions) as session:
        for i, key, data in photos:
            session.add(
                AvatarPhoto(
                    avatar_id=avatar_id,
                    storage_key=key,
                    sha256=f"{i:064x}",
                    perceptual_hash=f"{i:016x}",
                    size_bytes=len(data),
                    width=600,
                    height=600,
                    metrics={},
                )
            )
    return avatar_id


async def test_the_avatar_review_at_a_short_balance_opens_the_top_up_and_continue_trains_that_draft(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=8105, first_name="Eve", language_code="en")
    await _say(telegram, user, "/start")
    avatar_id = await _draft_with_photos(app, telegram, user)
    hint = await _say(telegram, user, "done?")  # any text in the wizard offers the review
    await _press(telegram, user, "avw:review", hint)
    review = _sent(telegram, user)[-1]
    assert f"Training costs {AVATAR_PRICE} credits; your balance: 0 credits." in review.params["text"]
    assert buttons(review)[0] == (f"⭐ Top up to train ({AVATAR_PRICE} credits)", "avw:top")

    await _press(telegram, user, "avw:top", review)
    await _pay(telegram, user, _sent(telegram, user)[-1], package="l")  # 300 credits, the price exactly
    offer = _offers(telegram, user)[-1]
    [(label, data)] = buttons(offer)
    assert label == f"▶ Continue: train «Me in space» for {AVATAR_PRICE} credits"

    await _press(telegram, user, data, offer)
    assert "Training of <b>Me in space</b> has started" in _edited(telegram, offer)
    await _press(telegram, user, data, offer)  # again: nothing more
    assert _alert(telegram) == "This offer was already used or replaced by a newer one."
    job = await _submitted(fal)
    assert job.endpoint == "fal-ai/flux-lora-portrait-trainer"
    async with db.sessions() as session:
        avatars = list(await session.scalars(select(Avatar).where(Avatar.user_id == user.id)))
    assert [a.id for a in avatars] == [avatar_id]
    assert avatars[0].status is not AvatarStatus.DRAFT


async def test_delete_me_forgets_a_remembered_prompt(
    app: Runtime, telegram: FakeTelegramServer, db: Database
) -> None:
    user = FakeUser(id=8106, first_name="Fay", language_code="en")
    await _with_avatar(app, telegram, user, credits=0)
    card = await _say(telegram, user, "my secret wish")
    await _press(telegram, user, _data(card, ":top:"), card)

    async def remembered() -> list[str]:
        async with db.sessions() as session:
            records = (await session.scalars(select(FsmRecord).where(FsmRecord.key.like("%:resume")))).all()
        return [str(record.data) for record in records]

    assert any("my secret wish" in data for data in await remembered())
    asked = await _say(telegram, user, "/delete_me")
    confirm = next(data for _, data in buttons(asked) if "confirm" in data)
    await _press(telegram, user, confirm, asked)
    assert await remembered() == []


async def test_a_training_refused_at_the_press_is_remembered_and_continued_after_a_top_up(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer
) -> None:
    user = FakeUser(id=8107, first_name="Gus", language_code="ru")
    await _say(telegram, user, "/start")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(
            session=session, user_id=user.id, amount=AVATAR_PRICE, key="gift", kind=EntryKind.BONUS
        )
    await _draft_with_photos(app, telegram, user)
    hint = await _say(telegram, user, "готово?")
    await _press(telegram, user, "avw:review", hint)
    review = _sent(telegram, user)[-1]
    assert buttons(review)[0] == ("🚀 Запустить обучение", "avw:go")
    async with unit_of_work(app.services.sessions) as session:  # spent elsewhere before the press
        await app.services.ledger.charge(session=session, user_id=user.id, amount=1, key="spent")

    await _press(telegram, user, "avw:go", review)
    refusal = _sent(telegram, user)[-1]
    assert refusal.params["text"].startswith("Недостаточно кредитов")
    await _press(telegram, user, "topup", refusal)
    await _pay(telegram, user, _sent(telegram, user)[-1])  # 50 credits: enough now
    offer = _offers(telegram, user)[-1]
    [(label, data)] = buttons(offer)
    assert label == f"▶ Продолжить: обучить «Me in space» за {AVATAR_PRICE} кредитов"
    await _press(telegram, user, data, offer)
    assert "Обучение аватара <b>Me in space</b> запущено" in _edited(telegram, offer)
    assert (await _submitted(fal)).endpoint == "fal-ai/flux-lora-portrait-trainer"
