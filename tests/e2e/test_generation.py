"""Image generation as a user sees it, over the fake Bot API, the fake FAL queue and the fake
OpenAI server: prompt → options → hold → FAL (signed webhook) → images stored and delivered →
capture for what was delivered; NSFW and failures released; other users' generations refused;
a reference photo turned into a prompt.

The app runs in webhook mode on a real port, so FAL's webhooks reach it over HTTP; a webhook is
answered once it has queued the `generation.finish` job, so tests wait for the in-process jobs
(`_complete`) before looking at the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update
from taskiq import InMemoryBroker

from aisha.avatars.models import Avatar, AvatarStatus, AvatarType
from aisha.billing.models import CreditEntry, EntryKind
from aisha.clock import FrozenClock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.models import FINISH_JOB, ImageGeneration, storage_prefix
from aisha.jobs.queue import JobQueue
from aisha.providers.fal import webhook_url
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalJob, FakeFalServer, png_bytes
from aisha.sandbox.faults import Fault
from aisha.sandbox.openai import FakeOpenAIServer, chat_image_urls, chat_json_schema
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, free_port
from tests.e2e.test_metrics import scrape_samples, value

FUNDS = 100
PRICE = 5  # per image with an avatar (default prices)
PLAIN_PRICE = 3  # per image without one
VISION_PRICE = 2  # photo to prompt
TRIGGER = "ohwxe2e0000001"


LORA_FILE = "avatar-lora.safetensors"


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        server.host_file(LORA_FILE, b"weights")  # the LoRA of the avatars _setup_user makes
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
        fal_rest_url=fal.base_url,  # FAL's storage upload
        fal_jwks_url=fal.jwks_url,
        openai_api_key="sk-e2e",
        openai_base_url=openai_server.base_url,
        public_base_url=f"http://127.0.0.1:{port}",
        webhook_secret=WEBHOOK_SECRET,
        http_port=port,
    )
    runtime: Runtime = await start_app(settings)
    return runtime


class HeldFinishJobs:
    """Keeps the `generation.finish` jobs that webhooks queue out of the queue: lost, or let go later."""

    def __init__(self, queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> None:
        self.jobs: list[dict[str, Any]] = []
        self._enqueue = queue.enqueue

        async def hold(job: str, /, **kwargs: Any) -> None:
            if job == FINISH_JOB:
                self.jobs.append(kwargs)
            else:
                await self._enqueue(job, **kwargs)

        monkeypatch.setattr(queue, "enqueue", hold)

    async def release(self) -> None:
        for kwargs in self.jobs:
            await self._enqueue(FINISH_JOB, **kwargs)


@pytest.fixture
def held(app: Runtime, monkeypatch: pytest.MonkeyPatch) -> HeldFinishJobs:
    return HeldFinishJobs(app.services.queue, monkeypatch)


# --- plumbing ----------------------------------------------------------------------------------


def _buttons(call: Any) -> list[tuple[str, str]]:
    markup = call.params.get("reply_markup") or {}
    return [(b["text"], b.get("callback_data", "")) for row in markup.get("inline_keyboard", []) for b in row]


def _draft(call: Any) -> str:
    return _data(call, "gopt:").split(":")[1]


def _data(call: Any, prefix: str) -> str:
    return next(data for _, data in _buttons(call) if data.startswith(prefix))


async def _send(telegram: FakeTelegramServer, update: dict[str, Any]) -> None:
    assert await telegram.deliver(update) == 200  # answered after the update's transaction committed


async def _say(telegram: FakeTelegramServer, user: FakeUser, text: str | None = None, **kw: Any) -> Any:
    before = len(telegram.calls_of("sendMessage"))
    await _send(telegram, telegram.message_update(user, text, **kw))
    return [c for c in telegram.calls_of("sendMessage")[before:] if c.params.get("chat_id") == user.id][-1]


async def _press(telegram: FakeTelegramServer, user: FakeUser, data: str, under: Any) -> None:
    message = next(
        m for m in telegram.chat_messages(user.id) if m.get("message_id") == under.result["message_id"]
    )
    await _send(telegram, telegram.callback_update(user, data, message=message))


def _alert(telegram: FakeTelegramServer) -> str:
    return str(telegram.calls_of("answerCallbackQuery")[-1].params.get("text", ""))


async def _setup_user(
    app: Runtime,
    telegram: FakeTelegramServer,
    user: FakeUser,
    *,
    avatar: bool,
    avatar_type: AvatarType = AvatarType.PORTRAIT,
) -> None:
    await _say(telegram, user, "/start")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(
            session=session, user_id=user.id, amount=FUNDS, key=f"test:{user.id}", kind=EntryKind.BONUS
        )
        if avatar:
            # A trained avatar, as the avatars feature leaves it (training itself is not under test).
            session.add(
                Avatar(
                    user_id=user.id,
                    type=avatar_type,
                    status=AvatarStatus.READY,
                    name="Me",
                    trigger_phrase=f"{TRIGGER}{user.id}"[-14:],
                    is_main=True,
                    lora_url=f"{app.services.settings.fal_queue_url}/files/{LORA_FILE}",
                    training_config={},
                )
            )


async def _balance(app: Runtime, user_id: int) -> int:
    async with app.services.sessions() as session:
        return await app.services.ledger.get_balance(session=session, user_id=user_id)


async def _generation(db: Database, user_id: int) -> ImageGeneration:
    async with db.sessions() as session:
        rows = (
            await session.scalars(
                select(ImageGeneration)
                .where(ImageGeneration.user_id == user_id)
                .order_by(ImageGeneration.created_at.desc())
            )
        ).all()
        assert rows
        return rows[0]


async def _entries(db: Database, user_id: int) -> list[tuple[EntryKind, int]]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(CreditEntry.kind, CreditEntry.amount)
            .where(CreditEntry.user_id == user_id)
            .order_by(CreditEntry.created_at, CreditEntry.id)
        )
        return [(row.kind, row.amount) for row in rows]


async def _submitted(fal: FakeFalServer, n: int = 1) -> FakeFalJob:
    async with asyncio.timeout(20):
        return (await fal.wait_submissions(n))[n - 1]


def _albums(telegram: FakeTelegramServer, user_id: int) -> list[Any]:
    """The albums Telegram accepted for the user (not those it refused)."""
    return [
        c
        for c in telegram.calls_of("sendMediaGroup")
        if c.params.get("chat_id") == user_id and c.result is not None
    ]


def _stored_files(app: Runtime, user_id: int, generation_id: uuid.UUID) -> list[str]:
    root: Path = app.services.storage.root  # type: ignore[attr-defined]
    folder = root / storage_prefix(user_id, generation_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def _jobs_done(app: Runtime) -> None:
    """Wait for the jobs running in this process (the in-memory broker), e.g. `generation.finish`."""
    broker = app.services.queue.broker
    assert isinstance(broker, InMemoryBroker)
    async with asyncio.timeout(20):
        await broker.wait_all()


async def _complete(app: Runtime, fal: FakeFalServer, request_id: str, **kw: Any) -> None:
    """FAL ends the job and posts its webhook, which queues `generation.finish`; wait for that job."""
    assert await fal.complete(request_id, **kw) == 200
    await _jobs_done(app)


async def _confirm(telegram: FakeTelegramServer, user: FakeUser, options: Any, *, images: int = 1) -> None:
    if images != 1:
        await _press(telegram, user, _data(options, "gopt:").rsplit(":", 2)[0] + f":n:{images}", options)
    go = next(data for _, data in _buttons(options) if data.endswith(":go:"))
    await _press(telegram, user, go, options)


# --- the scenarios -----------------------------------------------------------------------------


async def test_text_prompt_is_generated_stored_delivered_and_captured_once(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
    db: Database,
) -> None:
    user = FakeUser(id=5101, first_name="Ann", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    trigger = f"{TRIGGER}{user.id}"[-14:]
    openai_server.structured_replies["image_prompt"] = {
        "prompt": "me as an astronaut on Mars, red dust, Earth in the sky",
        "source_language": "ru",
    }

    options = await _say(telegram, user, "я астронавт на Марсе")
    assert "Avatar: Me" in options.params["text"]
    assert ("✨ Generate for 5 credits", f"gopt:{_draft(options)}:go:") in _buttons(options)
    ratios = [text for text, data in _buttons(options) if data.startswith("gopt:") and ":r:" in data]
    assert [r.strip("• ") for r in ratios] == ["1:1", "3:4", "4:3", "9:16", "16:9"]

    # 2 images, 16:9: the options message is edited with the new price.
    draft = _data(options, "gopt:").split(":")[1]
    await _press(telegram, user, f"gopt:{draft}:n:2", options)
    await _press(telegram, user, f"gopt:{draft}:r:4", options)
    assert f"Generate for {2 * PRICE} credits" in str(_buttons(telegram.calls_of("editMessageText")[-1]))
    await _press(telegram, user, f"gopt:{draft}:go:", options)

    job = await _submitted(fal)
    assert job.endpoint == "fal-ai/flux-lora"
    payload = job.payload
    assert payload["loras"] == [{"path": f"{fal.base_url}/files/{LORA_FILE}", "scale": 1.0}]
    assert payload["image_size"] == "landscape_16_9"
    assert payload["num_images"] == 2 and payload["enable_safety_checker"] is True
    assert payload["num_inference_steps"] == 28 and payload["guidance_scale"] == 3.5
    assert isinstance(payload["seed"], int)
    assert payload["prompt"].startswith(f"{trigger} as an astronaut on Mars")
    assert payload["prompt"].count(trigger) == 1
    assert "kind=generation" in (job.webhook_url or "")
    # Credits are held while FAL works.
    assert await _balance(app, user.id) == FUNDS - 2 * PRICE

    await _complete(app, fal, job.request_id)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED
    assert generation.prompt == "я астронавт на Марсе"
    assert generation.enhanced_prompt == payload["prompt"]
    assert generation.cost == 2 * PRICE and len(generation.results) == 2
    assert generation.config["seed"] == payload["seed"] and generation.config["aspect_ratio"] == "16:9"
    assert _stored_files(app, user.id, generation.id) == ["1.png", "2.png"]
    stored = await app.services.storage.get(str(generation.results[0]["key"]))
    assert Image.open(io.BytesIO(stored)).size == (1024, 576)

    # Delivered as one album, from storage, then the action buttons.
    album = [c for c in telegram.calls_of("sendMediaGroup") if c.params.get("chat_id") == user.id]
    assert len(album) == 1 and len(album[0].params["media"]) == 2
    actions = telegram.calls_of("sendMessage")[-1]
    datas = [data for _, data in _buttons(actions)]
    assert f"gact:regen:{generation.id.hex}:0" in datas
    assert f"gact:like:{generation.id.hex}:1" in datas
    # One status message, edited (never a second one); the upload_photo action while working.
    status_edits = [
        c
        for c in telegram.calls_of("editMessageText")
        if c.params["message_id"] == options.result["message_id"]
    ]
    assert "Done: 2 images" in status_edits[-1].params["text"]
    assert any(c.params.get("action") == "upload_photo" for c in telegram.calls_of("sendChatAction"))

    # Captured once: a replayed webhook changes nothing.
    assert await fal.deliver(job.request_id, times=2) == 200
    await _jobs_done(app)
    assert await _balance(app, user.id) == FUNDS - 2 * PRICE
    entries = await _entries(db, user.id)
    assert [kind for kind, _ in entries] == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]
    assert len(telegram.calls_of("sendMediaGroup")) == 1

    # "Show the prompt" shows both prompts, the model's without the avatar's trigger token.
    await _press(telegram, user, f"gact:prompt:{generation.id.hex}:0", actions)
    shown = telegram.calls_of("sendMessage")[-1].params["text"]
    assert "я астронавт на Марсе" in shown
    assert "<code>me as an astronaut on Mars, red dust, Earth in the sky" in shown

    # The gallery shows it, newest first, one card.
    before = len(telegram.calls_of("sendPhoto"))
    await _send(telegram, telegram.message_update(user, "/gallery"))
    card = telegram.calls_of("sendPhoto")[before]
    assert "1 of 1" in card.params["caption"] and f"{2 * PRICE} credits" in card.params["caption"]

    # Nothing the bot sent in the whole flow carries the token (texts, captions, buttons).
    assert [c.method for c in telegram.calls if trigger in str(c.params)] == []


async def _captured_once(app: Runtime, db: Database, user_id: int, *, images: int) -> None:
    """One hold, captured once for the delivered images, and nothing else after the bonus."""
    assert [kind for kind, _ in await _entries(db, user_id)] == [
        EntryKind.BONUS,
        EntryKind.HOLD,
        EntryKind.CAPTURE,
    ]
    assert await _balance(app, user_id) == FUNDS - images * PRICE


async def test_fal_gets_its_answer_before_the_album_is_sent(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5113, first_name="Gus", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me on a bridge"), images=2)
    job = await _submitted(fal)
    # Telegram is slow to take the album: a flood wait of 2 s first.
    telegram.fail_next("sendMediaGroup", 429, retry_after=2)

    assert await fal.complete(job.request_id) == 200
    assert not _albums(telegram, user.id)  # FAL was answered while the album was still on its way
    await _jobs_done(app)
    albums = _albums(telegram, user.id)
    assert len(albums) == 1 and len(albums[0].params["media"]) == 2
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == 2 * PRICE
    await _captured_once(app, db, user.id, images=2)


def _chat_buttons(telegram: FakeTelegramServer, user: FakeUser, message_id: int) -> list[str]:
    """The callback data of the inline buttons under a message, as the chat shows it now."""
    message = next(m for m in telegram.chat_messages(user.id) if m.get("message_id") == message_id)
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [b.get("callback_data", "") for row in rows for b in row]


async def test_a_newer_result_takes_the_what_next_buttons_from_the_older_one(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5117, first_name="Kai", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me on a bridge"), images=2)
    await _complete(app, fal, (await _submitted(fal)).request_id)
    first = await _generation(db, user.id)
    actions = telegram.calls_of("sendMessage")[-1]
    assert actions.params["text"] == "What next?"
    assert f"gact:regen:{first.id.hex}:0" in _chat_buttons(telegram, user, actions.result["message_id"])

    # A newer result (one picture, its buttons under it): the album's "What next?" loses its own.
    await _confirm(telegram, user, await _say(telegram, user, "me in a forest"))
    await _complete(app, fal, (await _submitted(fal, 2)).request_id)
    second = await _generation(db, user.id)
    assert second.id != first.id
    [photo] = [c for c in telegram.calls_of("sendPhoto") if c.params.get("chat_id") == user.id]
    assert f"gact:regen:{second.id.hex}:0" in _chat_buttons(telegram, user, photo.result["message_id"])
    assert _chat_buttons(telegram, user, actions.result["message_id"]) == []
    assert actions.result["message_id"] in [
        c.params["message_id"] for c in telegram.calls_of("editMessageReplyMarkup")
    ]

    # The newest of all: the single picture's buttons go too, the album's stay gone.
    await _confirm(telegram, user, await _say(telegram, user, "me on a boat"), images=2)
    await _complete(app, fal, (await _submitted(fal, 3)).request_id)
    third = await _generation(db, user.id)
    assert _chat_buttons(telegram, user, photo.result["message_id"]) == []
    newest = telegram.calls_of("sendMessage")[-1]
    assert f"gact:regen:{third.id.hex}:0" in _chat_buttons(telegram, user, newest.result["message_id"])
    assert await _balance(app, user.id) == FUNDS - 5 * PRICE

    # Telegram refuses to take the older buttons off: only logged, the newest result is delivered.
    telegram.fail_next("editMessageReplyMarkup", 400, description="Bad Request: message can't be edited")
    await _confirm(telegram, user, await _say(telegram, user, "me in the snow"))
    await _complete(app, fal, (await _submitted(fal, 4)).request_id)
    fourth = await _generation(db, user.id)
    assert fourth.status is JobStatus.SUCCEEDED
    last_photo = [c for c in telegram.calls_of("sendPhoto") if c.params.get("chat_id") == user.id][-1]
    assert f"gact:regen:{fourth.id.hex}:0" in _chat_buttons(telegram, user, last_photo.result["message_id"])
    assert await _balance(app, user.id) == FUNDS - 6 * PRICE


async def test_a_webhook_delivered_twice_delivers_one_album_and_captures_once(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database, held: HeldFinishJobs
) -> None:
    user = FakeUser(id=5114, first_name="Hal", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me in a forest"), images=2)
    job = await _submitted(fal)
    await fal.complete(job.request_id, deliver=False)
    # Both deliveries arrive before either job runs: two `generation.finish` jobs, run at once.
    assert await fal.deliver(job.request_id, times=2) == 200
    assert len(held.jobs) == 2
    await held.release()
    await _jobs_done(app)

    assert len(_albums(telegram, user.id)) == 1
    await _captured_once(app, db, user.id, images=2)


async def test_the_sweep_settles_a_webhook_whose_job_was_lost(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database, held: HeldFinishJobs
) -> None:
    user = FakeUser(id=5115, first_name="Ida", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me on a boat"), images=2)
    job = await _submitted(fal)
    assert await fal.complete(job.request_id) == 200
    assert len(held.jobs) == 1  # and it never runs: the worker died with it
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUBMITTED and not _albums(telegram, user.id)

    # The sweep leaves the job `poll_after` from the webhook; past it, it asks FAL itself.
    sweep = app.services.recovery.run_once
    assert (await sweep())["generation.stuck"] == 0
    async with unit_of_work(db.sessions) as session:
        await session.execute(
            update(ImageGeneration)
            .where(ImageGeneration.id == generation.id)
            .values(updated_at=generation.updated_at - app.services.generation.rules.poll_after)
        )
    assert (await sweep())["generation.stuck"] == 1
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == 2 * PRICE
    assert len(_albums(telegram, user.id)) == 1
    assert await _balance(app, user.id) == FUNDS - 2 * PRICE

    # The lost job turning up after all changes nothing.
    await held.release()
    await _jobs_done(app)
    assert len(_albums(telegram, user.id)) == 1
    await _captured_once(app, db, user.id, images=2)


async def test_one_nsfw_image_of_four_is_released(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5102, first_name="Bo", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    options = await _say(telegram, user, "me on a beach")
    draft = _data(options, "gopt:").split(":")[1]
    await _press(telegram, user, f"gopt:{draft}:n:4", options)
    await _press(telegram, user, f"gopt:{draft}:go:", options)
    job = await _submitted(fal)
    assert await _balance(app, user.id) == FUNDS - 4 * PRICE

    await _complete(app, fal, job.request_id, nsfw=[False, True, False, False])
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == 3 * PRICE
    assert [r["index"] for r in generation.results] == [0, 2, 3]
    assert _stored_files(app, user.id, generation.id) == ["1.png", "3.png", "4.png"]
    assert await _balance(app, user.id) == FUNDS - 3 * PRICE
    album = telegram.calls_of("sendMediaGroup")[-1]
    assert len(album.params["media"]) == 3
    status = telegram.calls_of("editMessageText")[-1].params["text"]
    assert "blocked by the safety filter" in status and f"{PRICE} credits returned" in status


async def test_provider_failure_without_avatar_releases_everything(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5103, first_name="Cy", language_code="en")
    await _setup_user(app, telegram, user, avatar=False)
    offer = await _say(telegram, user, "a lighthouse in a storm")
    # No avatar: offer to create one (the avatars feature's entry) or to go on without one.
    assert ("🧑‍🎨 Create an avatar", "avw:new") in _buttons(offer)
    await _press(telegram, user, _data(offer, "gopt:"), offer)
    options = telegram.calls_of("editMessageText")[-1]
    assert "Without an avatar" in options.params["text"]
    draft = _data(offer, "gopt:").split(":")[1]
    await _press(telegram, user, f"gopt:{draft}:n:3", offer)
    await _press(telegram, user, f"gopt:{draft}:go:", offer)
    job = await _submitted(fal)
    assert job.endpoint == "fal-ai/flux/dev" and "loras" not in job.payload
    assert await _balance(app, user.id) == FUNDS - 3 * PLAIN_PRICE

    await _complete(app, fal, job.request_id, error="GPU fell over", error_status=500)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.FAILED and generation.cost == 0
    assert await _balance(app, user.id) == FUNDS
    assert [k for k, _ in await _entries(db, user.id)] == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    assert "could not be created" in telegram.calls_of("editMessageText")[-1].params["text"]
    assert not telegram.calls_of("sendMediaGroup") and not telegram.calls_of("sendPhoto")


async def test_short_balance_reserves_nothing_and_offers_a_top_up(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5104, first_name="Di", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(session=session, user_id=user.id, amount=FUNDS - 7, key="spend")
    options = await _say(telegram, user, "me in Rome")
    draft = _data(options, "gopt:").split(":")[1]
    await _press(telegram, user, f"gopt:{draft}:n:2", options)
    await _press(telegram, user, f"gopt:{draft}:go:", options)
    refusal = telegram.calls_of("editMessageText")[-1]
    assert [data for _, data in _buttons(refusal)] == ["topup"]
    assert "short" in refusal.params["text"] or "need" in refusal.params["text"]
    assert await _balance(app, user.id) == 7
    assert not fal.submissions


async def test_a_tampered_callback_for_another_users_generation_is_refused(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    owner = FakeUser(id=5105, first_name="Eve", language_code="en")
    intruder = FakeUser(id=5106, first_name="Mal", language_code="en")
    await _setup_user(app, telegram, owner, avatar=True)
    await _setup_user(app, telegram, intruder, avatar=True)
    options = await _say(telegram, owner, "me at a concert")
    await _confirm(telegram, owner, options)
    job = await _submitted(fal)
    await _complete(app, fal, job.request_id)
    generation = await _generation(db, owner.id)
    assert generation.status is JobStatus.SUCCEEDED

    under = await _say(telegram, intruder, "/help")
    for action in ("prompt", "del", "delyes", "regen", "like", "file", "free"):
        before = len(telegram.calls_of("sendMessage"))
        await _press(telegram, intruder, f"gact:{action}:{generation.id.hex}:0", under)
        assert _alert(telegram) == "This image is not available.", action
        assert len(telegram.calls_of("sendMessage")) == before, action  # nothing of the owner's shown
    # The owner's generation, its files and the intruder's money are untouched.
    assert (await _generation(db, owner.id)).id == generation.id
    assert _stored_files(app, owner.id, generation.id) == ["1.png"]
    assert await _balance(app, intruder.id) == FUNDS
    assert len(fal.submissions) == 1


async def test_photo_to_prompt_produces_a_generation(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
    db: Database,
) -> None:
    user = FakeUser(id=5107, first_name="Fay", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    trigger = f"{TRIGGER}{user.id}"[-14:]
    openai_server.structured_replies["photo_prompt"] = {
        "prompt": "me standing on a rooftop at dusk, denim jacket, arms crossed, city lights behind"
    }
    photo = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 120, 40)).save(photo, "JPEG")

    options = await _say(telegram, user, photo=photo.getvalue(), caption="/like")
    assert f"Generate for {PRICE + VISION_PRICE} credits" in str(_buttons(options))
    await _confirm(telegram, user, options)
    job = await _submitted(fal)
    assert job.payload["prompt"].startswith(f"{trigger} standing on a rooftop at dusk")
    # The vision model got the photo as an image input.
    vision_calls = [c for c in openai_server.chat_calls if chat_image_urls(c)]
    assert len(vision_calls) == 1 and chat_image_urls(vision_calls[0])[0].startswith(
        "data:image/jpeg;base64,"
    )
    assert await _balance(app, user.id) == FUNDS - PRICE - VISION_PRICE

    await _complete(app, fal, job.request_id)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED
    assert generation.prompt.startswith("me standing on a rooftop")
    assert generation.config["source"] == "photo"
    assert generation.cost == PRICE + VISION_PRICE
    assert await _balance(app, user.id) == FUNDS - PRICE - VISION_PRICE
    assert telegram.calls_of("sendPhoto")[-1].params["chat_id"] == user.id


async def test_metrics_show_generation_latency_and_the_failed_job(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer
) -> None:
    user = FakeUser(id=5110, first_name="Mo", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "a cat in a hat"))
    await _complete(app, fal, (await _submitted(fal)).request_id)
    await _confirm(telegram, user, await _say(telegram, user, "a dog in a hat"))
    failed = await _submitted(fal, 2)
    await _complete(app, fal, failed.request_id, error="GPU fell over", error_status=500)

    samples = await scrape_samples(app)
    # Only the delivered one is timed, from the confirmation to the images in the chat.
    assert value(samples, "aisha_generation_duration_seconds_count") == 1
    assert value(samples, "aisha_generation_duration_seconds_bucket", le="+Inf") == 1
    assert 0 < value(samples, "aisha_generation_duration_seconds_sum") < 60
    assert value(samples, "aisha_generations", status="succeeded") == 1
    assert value(samples, "aisha_generations", status="failed") == 1
    assert value(samples, "aisha_job_errors_total", job="generation.run", kind="provider") == 1


async def test_one_generation_more_than_allowed_is_refused_saying_how_many_run(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5111, first_name="Ed", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    for n in (1, 2):  # GENERATION_MAX_IN_FLIGHT is 2: both go to FAL and stay there
        await _confirm(telegram, user, await _say(telegram, user, f"portrait number {n}"))
        await _submitted(fal, n)
    third = await _say(telegram, user, "portrait number 3")
    await _confirm(telegram, user, third)
    assert _alert(telegram) == (
        "You already have 2 generations running (at most 2 at a time). Please wait for one to finish."
    )
    assert await _balance(app, user.id) == FUNDS - 2 * PRICE  # nothing held for the third

    # One finishes: the third may go now.
    await _complete(app, fal, fal.submissions[0].request_id)
    await _confirm(telegram, user, third)
    await _submitted(fal, 3)


async def test_a_generation_is_not_started_while_another_request_of_the_user_holds_the_lock(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer
) -> None:
    user = FakeUser(id=5112, first_name="Flo", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    options = await _say(telegram, user, "a castle at dawn")
    lease = await app.services.locks.acquire(user.id)  # as if another process were starting one
    assert lease is not None
    await _confirm(telegram, user, options)
    assert "your previous request is still being processed" in _alert(telegram)
    assert await _balance(app, user.id) == FUNDS and not fal.submissions
    await app.services.locks.release(lease)
    await _confirm(telegram, user, options)
    await _submitted(fal)


# --- faults at the start and at the finish -------------------------------------------------------


async def _settled(app: Runtime, user_id: int) -> None:
    """No hold left active, and `aisha ledger verify` would pass."""
    async with app.services.sessions() as session:
        assert await app.services.ledger.active_holds(session=session, user_id=user_id) == []
        assert await app.services.ledger.verify_all(session=session) == []


def _status_texts(telegram: FakeTelegramServer, options: Any) -> list[str]:
    """What the one status message (the confirmed options) was edited to, in order."""
    return [
        c.params["text"]
        for c in telegram.calls_of("editMessageText")
        if c.params["message_id"] == options.result["message_id"] and c.result is not None
    ]


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RESET, Fault.TIMEOUT])
async def test_a_submission_with_no_answer_is_never_resent_and_released_once_at_the_timeout(
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    fault: Fault,
) -> None:
    port = free_port()
    app: Runtime = await start_app(
        make_settings(
            fal_key=fal.key,
            fal_queue_url=fal.base_url,
            fal_jwks_url=fal.jwks_url,
            fal_timeout_seconds=0.5,
            generation_poll_after_seconds=0,
            public_base_url=f"http://127.0.0.1:{port}",
            webhook_secret=WEBHOOK_SECRET,
            http_port=port,
        )
    )
    user = FakeUser(id=5201, first_name="Jo", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    # A 500, a dropped connection or no answer: FAL may have queued it, so it is not sent again.
    fal.fail_nth("POST /fal-ai/flux-lora", fault)
    options = await _say(telegram, user, "me on the moon")
    await _confirm(telegram, user, options, images=2)
    await _jobs_done(app)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUBMITTED and generation.provider_request_id is None
    assert await _balance(app, user.id) == FUNDS - 2 * PRICE
    await app.services.generation.enqueue(generation.id)  # the job again: a redelivery
    await _jobs_done(app)
    assert (await app.services.recovery.run_once())["generation.stuck"] == 0  # before the timeout

    later = FrozenClock(datetime.now(UTC) + app.services.generation.rules.timeout + timedelta(seconds=1))
    monkeypatch.setattr(app.services.generation_flow, "_clock", later)
    assert (await app.services.recovery.run_once())["generation.stuck"] == 1
    assert (await app.services.recovery.run_once())["generation.stuck"] == 0
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.FAILED and generation.cost == 0
    assert len(fal.faults.injected) == 1 and fal.submissions == []
    assert await _balance(app, user.id) == FUNDS
    assert [k for k, _ in await _entries(db, user.id)] == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    failures = [t for t in _status_texts(telegram, options) if "could not be created" in t]
    assert len(failures) == 1 and "it took too long" in failures[0]
    assert f"{2 * PRICE} credits returned" in failures[0]
    await _settled(app, user.id)


async def test_an_image_that_cannot_be_downloaded_is_not_charged(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5202, first_name="Kit", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    options = await _say(telegram, user, "me in a library")
    await _confirm(telegram, user, options, images=2)
    job = await _submitted(fal)
    fal.fail_nth("GET /files/", Fault.SERVER_ERROR, n=2)  # the second image's download

    await _complete(app, fal, job.request_id)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == PRICE
    assert [r["index"] for r in generation.results] == [0]
    assert _stored_files(app, user.id, generation.id) == ["1.png"]
    await _captured_once(app, db, user.id, images=1)
    done = _status_texts(telegram, options)[-1]
    assert "Done: 1 image" in done and "1 image could not be generated" in done
    assert f"{PRICE} credits returned" in done
    assert len(telegram.calls_of("sendPhoto")) == 1 and not telegram.calls_of("sendMediaGroup")
    await _settled(app, user.id)


async def test_no_image_downloaded_charges_nothing_and_says_so_once(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5203, first_name="Lu", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    options = await _say(telegram, user, "me in a desert")
    await _confirm(telegram, user, options, images=2)
    job = await _submitted(fal)
    fal.fail_nth("GET /files/", Fault.RESET, n=1)
    fal.fail_nth("GET /files/", Fault.SERVER_ERROR, n=2)

    await _complete(app, fal, job.request_id)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.FAILED and generation.cost == 0
    assert _stored_files(app, user.id, generation.id) == []
    assert await _balance(app, user.id) == FUNDS
    failures = [t for t in _status_texts(telegram, options) if "could not be created" in t]
    assert len(failures) == 1 and f"{2 * PRICE} credits returned" in failures[0]
    assert not telegram.calls_of("sendPhoto") and not telegram.calls_of("sendMediaGroup")
    assert await fal.deliver(job.request_id) == 200  # FAL's retry changes nothing
    await _jobs_done(app)
    assert await _balance(app, user.id) == FUNDS
    await _settled(app, user.id)


async def test_an_album_telegram_refuses_with_403_keeps_the_stored_images_charged_once(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    # "Delivered" is stored in the gallery: a user who blocked the bot finds them there later.
    user = FakeUser(id=5204, first_name="Mo", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    options = await _say(telegram, user, "me at a concert")
    await _confirm(telegram, user, options, images=2)
    job = await _submitted(fal)
    telegram.fail_nth("sendMediaGroup", Fault.FORBIDDEN)

    await _complete(app, fal, job.request_id)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == 2 * PRICE
    assert _stored_files(app, user.id, generation.id) == ["1.png", "2.png"]
    assert telegram.faults.injected == [("sendmediagroup", Fault.FORBIDDEN)]
    assert not _albums(telegram, user.id)  # refused, and not tried again
    assert len(telegram.calls_of("sendMediaGroup")) == 1
    assert len([t for t in _status_texts(telegram, options) if "Done: 2 images" in t]) == 1
    await _captured_once(app, db, user.id, images=2)
    assert await fal.deliver(job.request_id) == 200  # FAL's retry: no second album, no second charge
    await _jobs_done(app)
    assert len(telegram.calls_of("sendMediaGroup")) == 1
    await _captured_once(app, db, user.id, images=2)
    await _settled(app, user.id)


async def test_a_hanging_fal_submission_blocks_no_other_user(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    db: Database,
    capfd: pytest.CaptureFixture[str],
) -> None:
    fal.submit_delay = 20  # FAL takes the job and is slow to say so
    user = FakeUser(id=5205, first_name="Ned", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me in the rain"))
    await _submitted(fal)
    assert (await _generation(db, user.id)).status is JobStatus.SUBMITTED  # committed before the call

    other = FakeUser(id=5206, first_name="Oz", language_code="en")
    answer = await _say(telegram, other, "/balance")
    assert "credits" in answer.params["text"]
    # Answered while FAL still hangs (it answers only when told to, or after 20 s): nothing waited for it.
    assert (await _generation(db, user.id)).provider_request_id is None

    fal.answer_submissions()
    await _jobs_done(app)
    generation = await _generation(db, user.id)
    assert generation.provider_request_id == fal.submissions[0].request_id
    assert "database is locked" not in capfd.readouterr().err


async def test_the_free_regeneration_turns_the_offer_into_its_status_message(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
    db: Database,
) -> None:
    openai_server.structured_replies["portrait_quality"] = {"ok": False, "defects": ["extra_fingers"]}
    user = FakeUser(id=5207, first_name="Pia", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me with a guitar"))
    first = await _submitted(fal)
    await _complete(app, fal, first.request_id)
    offer = telegram.calls_of("sendMessage")[-1]
    assert "regenerate it once for free" in offer.params["text"]
    # The check saw the whole image at high detail, where eyes and fingers can be made out.
    [check] = [
        body
        for body in openai_server.chat_calls
        if (chat_json_schema(body) or ("",))[0] == "portrait_quality"
    ]
    [image] = [part for part in check["messages"][1]["content"] if part["type"] == "image_url"]
    assert image["image_url"]["detail"] == "high"
    assert Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"].split(",", 1)[1]))).size == (
        768,
        1024,
    )
    free = next(data for _, data in _buttons(offer) if data.startswith("gact:free:"))

    await _press(telegram, user, free, offer)
    # The offer's message is written as the new generation's status message before Telegram is
    # called, then edited: the job keeps editing that one message.
    assert _status_texts(telegram, offer)[0] == "⏳ Getting ready…"
    second = await _submitted(fal, 2)
    await _complete(app, fal, second.request_id)
    assert any("Done: 1 image, 0 credits charged" in t for t in _status_texts(telegram, offer))
    await _press(telegram, user, free, offer)  # the offer is used up
    assert len(fal.submissions) == 2
    assert await _balance(app, user.id) == FUNDS - PRICE
    await _settled(app, user.id)


async def test_an_avatar_outlives_fals_cdn_the_generation_republishes_our_copy(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database
) -> None:
    user = FakeUser(id=5140, first_name="Lea", language_code="en")
    await _setup_user(app, telegram, user, avatar=False)
    # A training FAL is running for the user (how it started is not under test here).
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for n in range(10):
            zipped.writestr(f"{n:02d}.png", png_bytes(512, 512, (n * 20, 90, 120)))
    avatar_id = uuid.uuid4()
    fal_client = app.services.fal
    assert fal_client is not None and app.settings.public_base_url
    submission = await fal_client.submit(
        "fal-ai/flux-lora-portrait-trainer",
        {"images_data_url": fal.host_file("training.zip", archive.getvalue(), "application/zip")},
        webhook_url=webhook_url(app.settings.public_base_url, kind="avatar", row_id=avatar_id),
    )
    async with unit_of_work(app.services.sessions) as session:
        session.add(
            Avatar(
                id=avatar_id,
                user_id=user.id,
                type=AvatarType.PORTRAIT,
                status=AvatarStatus.SUBMITTED,
                name="Me",
                trigger_phrase=f"{TRIGGER}{user.id}"[-14:],
                provider_endpoint="fal-ai/flux-lora-portrait-trainer",
                provider_request_id=submission.request_id,
                training_config={},
            )
        )

    # Training ends: the avatar is ready, and its LoRA and config are copied into our storage.
    assert await fal.complete(submission.request_id) == 200
    await _jobs_done(app)
    async with db.sessions() as session:
        avatar = await session.get(Avatar, avatar_id)
        assert avatar is not None and avatar.status is AvatarStatus.READY and avatar.lora_url
        fal_lora_url, kept = avatar.lora_url, dict(avatar.training_config)
    root: Path = app.services.storage.root  # type: ignore[attr-defined]
    fal_lora = fal.files[fal_lora_url.rsplit("/", 1)[1]][0]
    assert (root / kept["lora_key"]).read_bytes() == fal_lora
    assert (root / kept["config_key"]).is_file()

    # FAL's media expiry removes the LoRA from its CDN.
    fal.expire_file(fal_lora_url)
    await _confirm(telegram, user, await _say(telegram, user, "me in Paris"))
    job = await _submitted(fal, 2)
    [lora] = job.payload["loras"]
    assert lora["path"] != fal_lora_url and fal.files[lora["path"].rsplit("/", 1)[1]][0] == fal_lora
    await _complete(app, fal, job.request_id)

    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUCCEEDED and generation.cost == PRICE
    assert len(telegram.calls_of("sendPhoto")) == 1
    await _captured_once(app, db, user.id, images=1)
    async with db.sessions() as session:
        avatar = await session.get(Avatar, avatar_id)
        assert avatar is not None and avatar.lora_url == lora["path"]  # the next one starts from there


async def test_a_webhook_for_another_fal_user_is_refused_and_changes_nothing(
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    db: Database,
) -> None:
    port = free_port()
    app: Runtime = await start_app(
        make_settings(
            fal_key=fal.key,
            fal_queue_url=fal.base_url,
            fal_jwks_url=fal.jwks_url,
            fal_user_id="our-fal-user",  # the fake FAL signs as "fake-fal-user"
            public_base_url=f"http://127.0.0.1:{port}",
            webhook_secret=WEBHOOK_SECRET,
            http_port=port,
        )
    )
    user = FakeUser(id=5141, first_name="Max", language_code="en")
    await _setup_user(app, telegram, user, avatar=True)
    await _confirm(telegram, user, await _say(telegram, user, "me at the sea"))
    job = await _submitted(fal)
    assert await fal.complete(job.request_id) == 401
    await _jobs_done(app)
    generation = await _generation(db, user.id)
    assert generation.status is JobStatus.SUBMITTED and not generation.results
    assert await _balance(app, user.id) == FUNDS - PRICE  # still held, nothing captured
    assert not telegram.calls_of("sendPhoto")


async def test_a_style_avatar_shows_as_a_style_on_the_card(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer
) -> None:
    user = FakeUser(id=5190, language_code="ru")
    await _setup_user(app, telegram, user, avatar=True, avatar_type=AvatarType.STYLE)
    options = await _say(telegram, user, "лиса в снегу")
    assert "🎨 Стиль: Me" in options.params["text"]
    assert "🧑" not in options.params["text"]


async def test_the_card_switches_to_another_ready_avatar_and_generates_with_its_lora(
    app: Runtime,
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    openai_server: FakeOpenAIServer,
    db: Database,
) -> None:
    user = FakeUser(id=5901, language_code="en")
    await _setup_user(app, telegram, user, avatar=True)  # "Me", the main one
    other = FakeUser(id=5902, language_code="en")
    await _setup_user(app, telegram, other, avatar=True)  # someone else's "Me"
    fal.host_file("second-lora.safetensors", b"second weights")
    second_lora = f"{fal.base_url}/files/second-lora.safetensors"
    async with unit_of_work(app.services.sessions) as session:
        second = Avatar(
            user_id=user.id,
            type=AvatarType.STYLE,
            status=AvatarStatus.READY,
            name="Watercolour",
            trigger_phrase="ohwxe2e0005999",
            lora_url=second_lora,
            training_config={},
        )
        session.add(second)
        await session.flush()
        second_id = second.id
        foreign_id = await session.scalar(select(Avatar.id).where(Avatar.user_id == other.id))
    assert foreign_id is not None

    def card_text(options: Any) -> str:
        [message] = [
            m for m in telegram.chat_messages(user.id) if m["message_id"] == options.result["message_id"]
        ]
        return str(message["text"])

    options = await _say(telegram, user, "a lighthouse at dawn")
    draft = _draft(options)
    assert "Avatar: Me" in card_text(options)
    assert ("🔄 Another avatar", f"gopt:{draft}:av:") in _buttons(options)

    await _press(telegram, user, f"gopt:{draft}:av:", options)
    listed = telegram.calls_of("editMessageReplyMarkup")[-1]
    assert _buttons(listed) == [
        ("• Me •", f"gopt:{draft}:a:{(await _main_avatar(db, user.id)).hex}"),
        ("Watercolour", f"gopt:{draft}:a:{second_id.hex}"),
        ("◀ Back", f"gopt:{draft}:b:"),
    ]
    assert all(len(data.encode()) <= 64 for _, data in _buttons(listed))

    await _press(telegram, user, f"gopt:{draft}:b:", options)  # back: the options again
    assert (f"✨ Generate for {PRICE} credits", f"gopt:{draft}:go:") in _buttons(
        telegram.calls_of("editMessageReplyMarkup")[-1]
    )
    await _press(telegram, user, f"gopt:{draft}:av:", options)

    # Tampered or foreign ids: a clear answer, and the card stays as it was.
    for forged in (foreign_id.hex, "0" * 32, "not-an-id"):
        await _press(telegram, user, f"gopt:{draft}:a:{forged}", options)
        assert _alert(telegram) == "That avatar is not available any more. Please start again."
    assert "Avatar: Me" in card_text(options)

    await _press(telegram, user, f"gopt:{draft}:a:{second_id.hex}", options)
    assert "🎨 Style: Watercolour" in card_text(options) and "Avatar: Me" not in card_text(options)
    await _confirm(telegram, user, telegram.calls_of("editMessageText")[-1])
    job = await _submitted(fal)
    assert job.payload["loras"] == [{"path": second_lora, "scale": 1.0}]
    assert (await _generation(db, user.id)).avatar_id == second_id


async def _main_avatar(db: Database, user_id: int) -> uuid.UUID:
    async with db.sessions() as session:
        found = await session.scalar(
            select(Avatar.id).where(Avatar.user_id == user_id, Avatar.is_main.is_(True))
        )
        assert found is not None
        return found
