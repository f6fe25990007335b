"""Avatars as a user and the operator see them, over the fake Bot API and the fake FAL queue.

The app runs in webhook mode on a real port, so FAL's signed webhooks and its download of the
training archive (a signed link) reach it over HTTP, as in production.
"""

from __future__ import annotations

import asyncio
import io
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from aisha.avatars.models import Avatar, AvatarPhoto, AvatarStatus, AvatarType
from aisha.avatars.service import photo_prefix
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.faults import Fault
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, buttons, count, eventually, free_port, jobs_done, say
from tests.media import DISTINCT, face_photo

PRICE = PriceList().avatar_portrait  # the default portrait price
BONUS = PRICE + 50


# --- plumbing ----------------------------------------------------------------------------------


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def avatar_settings(make_settings: Callable[..., Any], fal: FakeFalServer) -> Callable[..., Any]:
    def make(*, reachable: bool = True, **overrides: Any) -> Any:
        """``reachable``: this machine's address stands in for the bot's public one, and the fake
        FAL may fetch the training archive from it."""
        port = free_port()
        values: dict[str, Any] = {
            "fal_key": fal.key,
            "fal_queue_url": fal.base_url,
            "fal_jwks_url": fal.jwks_url,
            "public_base_url": f"http://127.0.0.1:{port}",
            "webhook_secret": WEBHOOK_SECRET,
            "http_port": port,
        }
        settings = make_settings(**(values | overrides))
        if reachable and settings.public_base_url:
            fal.reachable(settings.public_base_url)
        return settings

    return make


@pytest.fixture
async def app(avatar_settings: Callable[..., Any], start_app: Callable[..., Any]) -> Runtime:
    runtime: Runtime = await start_app(avatar_settings())
    return runtime


def _texts_to(telegram: FakeTelegramServer, user: FakeUser) -> list[str]:
    return [c.params["text"] for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == user.id]


async def _send(telegram: FakeTelegramServer, update: dict[str, Any]) -> None:
    # Webhook mode: the app answers 200 after the update's transaction committed.
    assert await telegram.deliver(update) == 200


async def _say(telegram: FakeTelegramServer, user: FakeUser, text: str) -> Any:
    before = len(telegram.calls_of("sendMessage"))
    await _send(telegram, telegram.message_update(user, text))
    calls = [c for c in telegram.calls_of("sendMessage")[before:] if c.params.get("chat_id") == user.id]
    return calls[-1]


async def _press(telegram: FakeTelegramServer, user: FakeUser, data: str, under: Any) -> None:
    await _press_on(telegram, user, data, under.result["message_id"])


async def _press_on(telegram: FakeTelegramServer, user: FakeUser, data: str, message_id: int) -> None:
    message = next(m for m in telegram.chat_messages(user.id) if m.get("message_id") == message_id)
    await _send(telegram, telegram.callback_update(user, data, message=message))


async def _last_alert(telegram: FakeTelegramServer) -> str:
    call = telegram.calls_of("answerCallbackQuery")[-1]
    return str(call.params.get("text", ""))


def _statuses(telegram: FakeTelegramServer, user: FakeUser) -> list[dict[str, Any]]:
    """The wizard's status messages in the chat, as they read now."""
    return [m for m in telegram.chat_messages(user.id) if m.get("text", "").startswith("📸 ")]


def _message(telegram: FakeTelegramServer, user: FakeUser, message_id: int) -> dict[str, Any]:
    return next(m for m in telegram.chat_messages(user.id) if m["message_id"] == message_id)


def _buttons_in_chat(telegram: FakeTelegramServer, user: FakeUser) -> list[tuple[str, str]]:
    """Every inline button still shown in the chat."""
    return [
        (b["text"], b.get("callback_data", ""))
        for m in telegram.chat_messages(user.id)
        for row in (m.get("reply_markup") or {}).get("inline_keyboard", [])
        for b in row
    ]


def _accepted_counts(
    telegram: FakeTelegramServer, user: FakeUser, message_id: int, *, word: str = "Accepted"
) -> list[int]:
    """The "Accepted: N" of every version of the status message, in the order they were sent."""
    versions = [
        c.params["text"]
        for c in telegram.calls
        if c.method in ("sendMessage", "editMessageText")
        and c.params.get("chat_id") == user.id
        and (c.method == "sendMessage" or c.params.get("message_id") == message_id)
        and c.params.get("text", "").startswith("📸 ")
    ]
    return [int(re.search(rf"{word}: (\d+)", text)[1]) for text in versions]  # type: ignore[index]


async def _fund(app: Runtime, user_id: int) -> None:
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(
            session=session, user_id=user_id, amount=BONUS, key=f"test:{user_id}", kind=EntryKind.BONUS
        )


async def _balance(app: Runtime, user_id: int) -> int:
    async with app.services.sessions() as session:
        return await app.services.ledger.get_balance(session=session, user_id=user_id)


async def _avatar(db: Database, user_id: int) -> Avatar:
    async with db.sessions() as session:
        avatar = await session.scalar(select(Avatar).where(Avatar.user_id == user_id))
        assert avatar is not None
        return avatar


async def _entries(db: Database, user_id: int) -> list[tuple[EntryKind, int]]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(CreditEntry.kind, CreditEntry.amount)
            .where(CreditEntry.user_id == user_id)
            .order_by(CreditEntry.created_at, CreditEntry.id)
        )
        return [(row.kind, row.amount) for row in rows]


async def _files(app: Runtime, user_id: int, avatar_id: uuid.UUID) -> list[str]:
    root = app.services.storage.root  # type: ignore[attr-defined]
    folder = root / photo_prefix(user_id, avatar_id)
    return (
        sorted(str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    )


async def _submitted(fal: FakeFalServer, n: int = 1) -> Any:
    async with asyncio.timeout(30):
        return (await fal.wait_submissions(n))[n - 1]


async def _seed_and_train(
    app: Runtime, telegram: FakeTelegramServer, user: FakeUser, *, polling: bool = False
) -> uuid.UUID:
    """A confirmed avatar with 10 stored photos, its training job enqueued (skips the slow checks)."""
    await (say(telegram, user, "/start") if polling else _say(telegram, user, "/start"))
    await _fund(app, user.id)
    return await enqueue_seeded_training(app, user.id)


async def enqueue_seeded_training(app: Runtime, user_id: int, *, name: str = "Seeded") -> uuid.UUID:
    """A confirmed avatar with 10 photos stored directly, its training job enqueued."""
    avatars = app.services.avatars
    async with unit_of_work(app.services.sessions) as session:
        avatar = await avatars.create_draft(
            session=session, user_id=user_id, avatar_type=AvatarType.PORTRAIT, name=name
        )
        avatar_id = avatar.id
    # Files first, rows after: no storage call inside a transaction that writes.
    photos = []
    for i in range(10):
        key = f"{photo_prefix(user_id, avatar_id)}/photos/{i}.jpg"
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
    async with unit_of_work(app.services.sessions) as session:
        await avatars.confirm(session=session, user_id=user_id, avatar_id=avatar_id)
    await app.services.queue.enqueue("avatars.train", avatar_id=str(avatar_id))
    return avatar_id


# --- the whole way -------------------------------------------------------------------------------


async def test_wizard_training_and_signed_webhook_make_an_avatar_and_charge_once(
    telegram: FakeTelegramServer, fal: FakeFalServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=7001, first_name="Eileen", language_code="en")
    intro = await _say(telegram, user, "/avatar")
    await _fund(app, user.id)
    assert "Portrait" in intro.params["text"] and f"{PRICE} credits" in intro.params["text"]
    assert [data for _, data in buttons(intro)] == ["avt:portrait", "avt:style"]

    await _press(telegram, user, "avt:portrait", intro)
    assert "What shall we call this avatar?" in _texts_to(telegram, user)[-1]
    # The kind is chosen: the intro keeps its text and the choice, not its buttons.
    chosen = _message(telegram, user, intro.result["message_id"])
    assert chosen["text"].endswith("Chosen: 🧑 Portrait") and "reply_markup" not in chosen
    asked = await _say(telegram, user, "Space <me>")
    assert "send 10–20 photos" in asked.params["text"]
    avatar = await _avatar(db, user.id)
    assert avatar.status is AvatarStatus.DRAFT and avatar.name == "Space <me>"

    # Photos and full-quality files, singly and as an album, plus a resend and a non-image.
    updates = []
    for n, i in enumerate(DISTINCT):
        if n < 4:
            updates.append(telegram.message_update(user, photo=face_photo(i)))
        elif n < 7:
            updates.append(telegram.message_update(user, photo=face_photo(i), media_group_id="album-1"))
        else:
            updates.append(
                telegram.message_update(user, document=(face_photo(i), f"IMG_{i}.jpg", "image/jpeg"))
            )
    updates.append(
        telegram.message_update(user, document=(b"%PDF-1.4 not a photo", "cv.pdf", "application/pdf"))
    )
    updates.append(telegram.message_update(user, photo=face_photo(DISTINCT[0])))  # the same photo again
    for update in updates:
        await _send(telegram, update)

    await jobs_done(app, timeout=60)

    # One status message, edited in place as the photos were checked; one button under it.
    statuses = _statuses(telegram, user)
    assert len(statuses) == 1 and statuses[0]["edited"]
    status = statuses[0]
    # The photo and its resend are checked at once: whichever is stored first counts, the other
    # is the duplicate. Refusals are listed in the order the photos were sent.
    refused = [
        "• cv.pdf — not a picture",
        "• photo 12 — same as another photo",
    ]
    if "• photo 1 — same as another photo" in status["text"]:
        refused = ["• photo 1 — same as another photo", "• cv.pdf — not a picture"]
    assert status["text"] == (
        "📸 Photos for Space <me>\n"
        "Accepted: 10 photos (you need 10–20).\n"
        "That's enough to start. You can add up to 10 more photos, or review and start.\n"
        "\n"
        "Not accepted: 2 photos\n" + "\n".join(refused)
    )
    assert _buttons_in_chat(telegram, user) == [("▶ Review and start", "avw:review")]
    assert not [c for c in telegram.calls_of("sendMessage") if c.params.get("reply_to_message_id")]
    # Every state it showed on the way counted within the limits, in order.
    counts = _accepted_counts(telegram, user, status["message_id"])
    assert counts == sorted(counts) and counts[-1] == 10 and max(counts) <= 20
    assert await count(db, AvatarPhoto, AvatarPhoto.avatar_id == avatar.id) == 10
    stored = await _files(app, user.id, avatar.id)
    assert len(stored) == 10 and all("/photos/" in key for key in stored)

    # Review: the photos as albums (10 in one), the price against the balance; then start.
    albums_before = len(telegram.calls_of("sendMediaGroup"))
    await _press_on(telegram, user, "avw:review", status["message_id"])
    albums = telegram.calls_of("sendMediaGroup")[albums_before:]
    assert [len(call.params["media"]) for call in albums] == [10]
    review = telegram.calls_of("sendMessage")[-1]
    assert "<b>Space &lt;me&gt;</b> (🧑 Portrait): 10 photos accepted." in review.params["text"]
    assert f"Training costs {PRICE} credits; your balance: {BONUS} credits." in review.params["text"]
    assert buttons(review) == [("🚀 Start training", "avw:go"), ("✖ Cancel", "avw:cancel")]
    # Reviewed again: the newer review's buttons replace the older one's.
    await _press_on(telegram, user, "avw:review", status["message_id"])
    assert "reply_markup" not in _message(telegram, user, review.result["message_id"])
    review = telegram.calls_of("sendMessage")[-1]
    assert [data for _, data in _buttons_in_chat(telegram, user)] == ["avw:review", "avw:go", "avw:cancel"]
    await _press(telegram, user, "avw:go", review)
    started = _message(telegram, user, review.result["message_id"])
    assert started["text"].startswith("🚀 Training of Space <me> has started")
    # The step is over: no button is left under the status or the review.
    await eventually(lambda: _true(_buttons_in_chat(telegram, user) == []))
    assert "That's enough to start" not in _message(telegram, user, status["message_id"])["text"]

    job = await _submitted(fal)
    assert job.endpoint == "fal-ai/flux-lora-portrait-trainer"
    avatar = await _avatar(db, user.id)
    assert job.payload["trigger_phrase"] == avatar.trigger_phrase
    assert job.payload["steps"] == 2500
    assert job.payload["data_archive_format"] == "zip"
    webhook = urlsplit(job.webhook_url or "")
    assert f"{webhook.scheme}://{webhook.netloc}" == app.settings.public_base_url
    assert webhook.path == "/webhooks/fal"
    assert parse_qs(webhook.query) == {"kind": ["avatar"], "id": [str(avatar.id)]}
    # FAL can fetch the archive through the signed link: ten normalized JPEGs.
    async with httpx.AsyncClient() as http:
        archive = await http.get(job.payload["images_data_url"])
    assert archive.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(archive.content)).namelist()) == 10
    # ...and the fake FAL's runner did fetch it, from the URL as given.
    async with asyncio.timeout(10):
        await fal.complete(job.request_id, deliver=False)
    assert fal.archives[job.request_id] == [f"{i:02d}.jpg" for i in range(1, 11)]

    async def submitted() -> bool:
        row = await _avatar(db, user.id)
        return row.status is AvatarStatus.SUBMITTED and row.provider_request_id == job.request_id

    await eventually(submitted)
    assert await _balance(app, user.id) == BONUS - PRICE  # held

    # Forged webhooks: an unknown key, a stale timestamp, a changed body, no signature.
    assert await fal.deliver(job.request_id, sign_with="unknown") == 401
    assert await fal.deliver(job.request_id, timestamp_offset=-3600) == 401
    assert await fal.deliver(job.request_id, tamper_body=True) == 401
    assert await fal.deliver(job.request_id, sign_with=None) == 401
    assert (await _avatar(db, user.id)).status is AvatarStatus.SUBMITTED
    assert await _balance(app, user.id) == BONUS - PRICE

    # The genuine one, then FAL's retries of it.
    assert await fal.deliver(job.request_id) == 200
    avatar = await _avatar(db, user.id)
    assert avatar.status is AvatarStatus.READY and avatar.is_main
    assert avatar.lora_url and avatar.lora_url.endswith(".safetensors")
    assert await fal.deliver(job.request_id, times=2) == 200

    ready = [c for c in telegram.calls_of("sendMessage") if "is ready" in c.params["text"]]
    assert len(ready) == 1
    assert "Your avatar <b>Space &lt;me&gt;</b> is ready!" in ready[0].params["text"]
    assert ("🎨 Create an image", f"gen:new:{avatar.id.hex}") in buttons(ready[0])
    assert await _balance(app, user.id) == BONUS - PRICE
    assert await _entries(db, user.id) == [
        (EntryKind.BONUS, BONUS),
        (EntryKind.HOLD, -PRICE),
        (EntryKind.CAPTURE, 0),  # all of it spent, nothing returned
    ]
    # Biometric data goes at once (retention 0): files, the archive and the photo rows.
    assert await _files(app, user.id, avatar.id) == []
    assert await count(db, AvatarPhoto, AvatarPhoto.avatar_id == avatar.id) == 0
    assert avatar.photos_deleted_at is not None

    gallery = await _say(telegram, user, "/avatars")
    assert "<b>Space &lt;me&gt;</b> (🧑 Portrait): ✅ ready ⭐ main" in gallery.params["text"]


async def test_another_users_avatar_cannot_be_acted_on(
    telegram: FakeTelegramServer, fal: FakeFalServer, app: Runtime, db: Database
) -> None:
    owner = FakeUser(id=7101, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, owner)
    job = await _submitted(fal)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))
    await fal.complete(job.request_id)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.READY))

    intruder = FakeUser(id=7102, language_code="en")
    gallery = await _say(telegram, intruder, "/avatars")
    assert "no avatars yet" in gallery.params["text"]
    for action in ("open", "main", "rename", "photos", "delete", "delete_yes"):
        await _press(telegram, intruder, f"ava:{action}:{avatar_id.hex}", gallery)
        assert await _last_alert(telegram) == "This button is not valid any more."
    for forged in ("ava:delete_yes:not-a-uuid", "ava:explode:" + avatar_id.hex, "avt:cyborg"):
        await _press(telegram, intruder, forged, gallery)
        assert await _last_alert(telegram) == "This button is not valid any more."
    row = await _avatar(db, owner.id)
    assert row.status is AvatarStatus.READY and row.name == "Seeded" and row.is_main

    # The owner can: rename, then delete.
    own = await _say(telegram, owner, "/avatars")
    await _press(telegram, owner, f"ava:rename:{avatar_id.hex}", own)
    await _say(telegram, owner, "Renamed")
    assert (await _avatar(db, owner.id)).name == "Renamed"
    await _press(telegram, owner, f"ava:delete_yes:{avatar_id.hex}", own)
    assert await count(db, Avatar, Avatar.id == avatar_id) == 0


async def _status_is(db: Database, avatar_id: uuid.UUID, status: AvatarStatus) -> bool:
    async with db.sessions() as session:
        return await session.scalar(select(Avatar.status).where(Avatar.id == avatar_id)) == status


async def test_failed_training_releases_the_hold(
    telegram: FakeTelegramServer, fal: FakeFalServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=7201, language_code="ru")
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))
    assert await _balance(app, user.id) == BONUS - PRICE

    assert await fal.complete(job.request_id, error="training crashed", error_status=500) == 200
    assert await _status_is(db, avatar_id, AvatarStatus.FAILED)
    assert await _balance(app, user.id) == BONUS
    assert [kind for kind, _ in await _entries(db, user.id)] == [
        EntryKind.BONUS,
        EntryKind.HOLD,
        EntryKind.RELEASE,
    ]
    failed = _texts_to(telegram, user)[-1]
    assert "Обучение аватара <b>Seeded</b> не удалось" in failed and "Деньги не списаны" in failed
    assert await fal.deliver(job.request_id) == 200  # a retry changes nothing
    assert await _balance(app, user.id) == BONUS
    assert await _files(app, user.id, avatar_id) == []


async def test_lost_webhook_is_recovered_by_the_sweep(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(avatar_settings(avatar_poll_after_seconds=0))
    user = FakeUser(id=7301, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))

    assert (await app.services.recovery.run_once())["avatars.stuck"] == 0  # still in FAL's queue
    await fal.complete(job.request_id, deliver=False)  # done, but the webhook never comes
    handled = await app.services.recovery.run_once()
    assert handled["avatars.stuck"] >= 1
    assert await _status_is(db, avatar_id, AvatarStatus.READY)
    assert await _balance(app, user.id) == BONUS - PRICE
    await app.services.recovery.run_once()
    assert [kind for kind, _ in await _entries(db, user.id)].count(EntryKind.CAPTURE) == 1
    assert len([t for t in _texts_to(telegram, user) if "is ready" in t]) == 1


async def test_without_a_public_address_the_archive_goes_to_fal_storage_and_training_is_polled(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    # The embedded default: long polling, files on the local disk, no URL FAL could fetch.
    settings = make_settings(
        fal_key=fal.key,
        fal_queue_url=fal.base_url,
        fal_rest_url=fal.base_url,
        fal_jwks_url=fal.jwks_url,
        avatar_poll_after_seconds=0,
    )
    app: Runtime = await start_app(settings)
    user = FakeUser(id=7351, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user, polling=True)
    job = await _submitted(fal)
    archive_url = job.payload["images_data_url"]
    assert archive_url.startswith(f"{fal.base_url}/files/upload-")
    assert fal.files[archive_url.rsplit("/", 1)[1]][0][:2] == b"PK"  # the zip reached FAL's storage
    # FAL deletes it once training is over: the 3-hour training limit and an hour more.
    [(_, lifecycle)] = fal.uploads
    assert lifecycle["X-Fal-Object-Lifecycle-Preference"] == '{"expiration_duration_seconds": 14400}'
    assert await _files(app, user.id, avatar_id) == [
        f"{photo_prefix(user.id, avatar_id)}/photos/{i}.jpg" for i in range(10)
    ]
    assert "fal_webhook" not in str(fal.requests)  # nobody to call back: the sweep polls

    await fal.complete(job.request_id, deliver=False)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))
    await app.services.recovery.run_once()
    assert await _status_is(db, avatar_id, AvatarStatus.READY)
    assert await _balance(app, user.id) == BONUS - PRICE


async def test_provider_refusal_charges_nothing(
    telegram: FakeTelegramServer, fal: FakeFalServer, app: Runtime, db: Database
) -> None:
    fal.refuse_next(422)
    user = FakeUser(id=7401, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user)
    await eventually(
        lambda: _status_is(db, avatar_id, AvatarStatus.FAILED),
    )
    assert fal.submissions == []
    assert await _balance(app, user.id) == BONUS
    # Held (committed) before FAL was asked, given back when it refused.
    assert await _entries(db, user.id) == [
        (EntryKind.BONUS, BONUS),
        (EntryKind.HOLD, -PRICE),
        (EntryKind.RELEASE, PRICE),
    ]
    assert "the training service refused the job" in _texts_to(telegram, user)[-1]
    await _settled(app, user.id)


async def test_cancel_removes_uploaded_photos(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=7501, language_code="en")
    intro = await _say(telegram, user, "/avatar")
    await _press(telegram, user, "avt:style", intro)
    await _say(telegram, user, "Style me")
    avatar = await _avatar(db, user.id)
    for i in DISTINCT[:2]:
        await _send(telegram, telegram.message_update(user, photo=face_photo(i)))

    async def stored() -> bool:
        return len(await _files(app, user.id, avatar.id)) == 2

    await eventually(
        stored,
    )
    done = await _say(telegram, user, "/cancel")
    assert done.params["text"] == "Cancelled. The photos you uploaded have been deleted."
    assert await _files(app, user.id, avatar.id) == []
    assert await count(db, Avatar, Avatar.user_id == user.id) == 0
    assert await count(db, AvatarPhoto) == 0
    # The wizard is over: a photo now is not taken for an avatar.
    await _send(telegram, telegram.message_update(user, photo=face_photo(3)))
    assert "accepted" not in _texts_to(telegram, user)[-1]
    assert await count(db, AvatarPhoto) == 0


# --- the training start under faults ------------------------------------------------------------


async def _settled(app: Runtime, user_id: int) -> None:
    """No hold left active, and `aisha ledger verify` would pass."""
    async with app.services.sessions() as session:
        assert await app.services.ledger.active_holds(session=session, user_id=user_id) == []
        assert await app.services.ledger.verify_all(session=session) == []


def _failures_told(telegram: FakeTelegramServer, user: FakeUser) -> list[str]:
    return [t for t in _texts_to(telegram, user) if "failed:" in t]


async def test_a_hanging_fal_submission_blocks_no_other_user(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    app: Runtime,
    db: Database,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # On SQLite one writer at a time: a transaction held open over FAL's call stopped everyone.
    fal.submit_delay = 20
    trainee = FakeUser(id=7601, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, trainee)
    job = await _submitted(fal)  # FAL has the request and hangs before answering
    await eventually(lambda: _true(job.request_id in fal.archives))  # its runner fetched the archive
    assert await _status_is(db, avatar_id, AvatarStatus.SUBMITTING)
    assert await _balance(app, trainee.id) == BONUS - PRICE  # the hold is committed already

    other = FakeUser(id=7602, language_code="en")
    answer = await _say(telegram, other, "/balance")
    assert "0" in answer.params["text"] and "credits" in answer.params["text"]
    # Answered while FAL still hangs (it answers only when told to, or after 20 s): nothing waited for it.
    assert await _status_is(db, avatar_id, AvatarStatus.SUBMITTING)

    fal.answer_submissions()
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))
    assert len(fal.submissions) == 1
    assert "database is locked" not in capfd.readouterr().err


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RESET, Fault.TIMEOUT])
async def test_a_submission_with_no_answer_is_kept_until_the_timeout_then_released_once(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    fault: Fault,
) -> None:
    app: Runtime = await start_app(
        avatar_settings(
            avatar_training_timeout_seconds=60, avatar_poll_after_seconds=0, fal_timeout_seconds=0.5
        )
    )
    # A 500, a dropped connection or no answer: FAL may or may not have queued it (here it didn't).
    fal.fail_nth("POST /fal-ai/flux-lora-portrait-trainer", fault)
    user = FakeUser(id=7701, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user)
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTING))
    await eventually(lambda: _true(fal.faults.injected != []))
    await jobs_done(app)  # the client has given up, and the job with it
    await app.services.queue.enqueue("avatars.train", avatar_id=str(avatar_id))  # a redelivery
    await app.services.recovery.run_once()  # before the timeout: nothing to poll, nothing to do
    assert await _status_is(db, avatar_id, AvatarStatus.SUBMITTING)
    assert await _balance(app, user.id) == BONUS - PRICE
    # A minute on, no webhook came: FAL never had it (or lost it).
    later = FrozenClock(datetime.now(UTC) + timedelta(seconds=61))
    monkeypatch.setattr(app.services.avatars.flow, "_clock", later)
    await app.services.recovery.run_once()
    assert await _status_is(db, avatar_id, AvatarStatus.FAILED)
    await app.services.recovery.run_once()
    assert len(fal.faults.injected) == 1 and fal.submissions == []  # never sent twice
    assert await _balance(app, user.id) == BONUS
    assert len(_failures_told(telegram, user)) == 1
    assert "it took too long" in _failures_told(telegram, user)[0]
    await _settled(app, user.id)


async def test_a_submission_whose_answer_is_lost_is_adopted_by_the_webhook_and_charged_once(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(avatar_settings(fal_timeout_seconds=0.5))
    fal.submit_delay = 5  # FAL queues it, the client gives up waiting for the answer
    user = FakeUser(id=7801, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)
    await jobs_done(app)  # the client has given up waiting, and the job with it
    assert await _status_is(db, avatar_id, AvatarStatus.SUBMITTING)
    assert (await _avatar(db, user.id)).provider_request_id is None
    fal.answer_submissions()  # to nobody: the client has hung up
    await app.services.queue.enqueue("avatars.train", avatar_id=str(avatar_id))  # a redelivery
    await jobs_done(app)
    assert len(fal.submissions) == 1

    assert await fal.complete(job.request_id) == 200  # the signed webhook names our avatar
    avatar = await _avatar(db, user.id)
    assert avatar.status is AvatarStatus.READY and avatar.provider_request_id == job.request_id
    assert await fal.deliver(job.request_id) == 200
    assert [kind for kind, _ in await _entries(db, user.id)] == [
        EntryKind.BONUS,
        EntryKind.HOLD,
        EntryKind.CAPTURE,
    ]
    assert await _balance(app, user.id) == BONUS - PRICE
    assert len([t for t in _texts_to(telegram, user) if "is ready" in t]) == 1
    await _settled(app, user.id)


async def test_a_crash_right_after_fal_accepted_ends_ready_and_charged_once(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    app: Runtime,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = app.services.avatars.flow
    record = flow._submitted
    crashes: list[uuid.UUID] = []

    async def dies_once(avatar_id: uuid.UUID, request: Any) -> None:
        if not crashes:
            crashes.append(avatar_id)
            raise ConnectionResetError("the database went away before FAL's answer was stored")
        await record(avatar_id, request)

    monkeypatch.setattr(flow, "_submitted", dies_once)
    user = FakeUser(id=7901, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)
    await eventually(lambda: _has(crashes))
    assert await _status_is(db, avatar_id, AvatarStatus.SUBMITTING)
    await app.services.queue.enqueue("avatars.train", avatar_id=str(avatar_id))  # the job again
    await app.services.recovery.run_once()
    await jobs_done(app)
    assert len(fal.submissions) == 1

    assert await fal.complete(job.request_id) == 200
    assert await _status_is(db, avatar_id, AvatarStatus.READY)
    assert [kind for kind, _ in await _entries(db, user.id)].count(EntryKind.CAPTURE) == 1
    assert await _balance(app, user.id) == BONUS - PRICE
    assert len([t for t in _texts_to(telegram, user) if "is ready" in t]) == 1
    assert _failures_told(telegram, user) == []
    await _settled(app, user.id)


async def _has(items: list[Any]) -> bool:
    return bool(items)


async def _true(value: bool) -> bool:
    return value


async def test_create_image_under_a_ready_avatar_uses_that_avatar_not_the_main_one(
    telegram: FakeTelegramServer, fal: FakeFalServer, app: Runtime, db: Database
) -> None:
    user = FakeUser(id=7301, language_code="en")
    first = await _seed_and_train(app, telegram, user)  # "Seeded", the main avatar once ready
    await fal.complete((await _submitted(fal)).request_id)
    await eventually(lambda: _status_is(db, first, AvatarStatus.READY))
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(
            session=session, user_id=user.id, amount=PRICE, key="test:second", kind=EntryKind.BONUS
        )
    second = await enqueue_seeded_training(app, user.id, name="Second")
    await fal.complete((await _submitted(fal, 2)).request_id)
    await eventually(lambda: _status_is(db, second, AvatarStatus.READY))

    def ready_message() -> Any:
        return next(
            (c for c in telegram.calls_of("sendMessage") if "<b>Second</b> is ready!" in c.params["text"]),
            None,
        )

    await eventually(lambda: _true(ready_message() is not None))
    ready = ready_message()
    assert buttons(ready) == [("🎨 Create an image", f"gen:new:{second.hex}")]

    # Tampered data, or the button pressed by someone else: a clear answer, nothing changes.
    intruder = FakeUser(id=7302, language_code="en")
    start = await _say(telegram, intruder, "/start")
    await _press(telegram, intruder, f"gen:new:{second.hex}", start)  # forged under their own message
    assert await _last_alert(telegram) == "That avatar is not available any more. Please start again."
    await _press(telegram, user, "gen:new:not-an-id", ready)
    assert await _last_alert(telegram) == "This button is not valid any more."
    card = await _say(telegram, intruder, "a cat on the moon")
    assert "Second" not in card.params["text"]

    await _press(telegram, user, f"gen:new:{second.hex}", ready)
    assert _texts_to(telegram, user)[-1].startswith(
        "Describe the picture you want with the avatar <b>Second</b>"
    )
    card = await _say(telegram, user, "a cat on the moon")
    assert "🧑 Avatar: Second" in card.params["text"]
    # For that one card: the next prompt is the main avatar's again.
    card = await _say(telegram, user, "a dog on the moon")
    assert "🧑 Avatar: Seeded" in card.params["text"]


async def test_a_style_avatar_gets_advice_for_a_style_not_for_a_face(
    telegram: FakeTelegramServer, app: Runtime
) -> None:
    user = FakeUser(id=7303, language_code="en")
    intro = await _say(telegram, user, "/avatar")
    await _press(telegram, user, "avt:style", intro)
    asked = await _say(telegram, user, "Watercolours")
    assert asked.params["text"].startswith("Now send 10–20 photos in the style you want")
    assert "Good photos for a style: pictures of one kind" in asked.params["text"]
    assert "only you in the picture" not in asked.params["text"]


async def test_the_status_never_counts_past_the_maximum_and_cancel_leaves_no_button(
    telegram: FakeTelegramServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(avatar_settings(avatar_min_photos=2, avatar_max_photos=3))
    user = FakeUser(id=7551, language_code="ru")
    intro = await _say(telegram, user, "/avatar")
    await _fund(app, user.id)
    await _press(telegram, user, "avt:portrait", intro)
    await _say(telegram, user, "Я")
    for i in DISTINCT[:5]:
        await _send(telegram, telegram.message_update(user, photo=face_photo(i)))
    await jobs_done(app, timeout=40)

    [status] = _statuses(telegram, user)
    assert "Принято: 3 фото (нужно 2–3).\nЭто максимум. Проверьте и запустите обучение." in status["text"]
    # Which two came too late depends on how fast each was checked.
    assert "Не принято: 2 фото\n" in status["text"]
    assert len(re.findall(r"• фото [1-5] — сверх максимума", status["text"])) == 2
    assert max(_accepted_counts(telegram, user, status["message_id"], word="Принято")) == 3
    assert _buttons_in_chat(telegram, user) == [("▶ Проверить и запустить", "avw:review")]

    # Review: three photos in one album; the price against the balance.
    await _press_on(telegram, user, "avw:review", status["message_id"])
    [album] = telegram.calls_of("sendMediaGroup")
    assert len(album.params["media"]) == 3
    review = telegram.calls_of("sendMessage")[-1]
    assert f"Обучение стоит {PRICE} кредитов; ваш баланс: {BONUS} кредитов." in review.params["text"]
    assert [data for _, data in buttons(review)] == ["avw:go", "avw:cancel"]

    # /cancel: the draft goes, and no button is left under the status message.
    done = await _say(telegram, user, "/cancel")
    assert done.params["text"].startswith("Отменено.")
    # No button is left: neither the status message's review nor the review's start.
    assert _buttons_in_chat(telegram, user) == []
    assert await count(db, Avatar, Avatar.user_id == user.id) == 0


async def test_an_expired_draft_leaves_no_review_button_under_its_status_message(
    telegram: FakeTelegramServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(avatar_settings(avatar_min_photos=2, avatar_max_photos=3))
    user = FakeUser(id=7552, language_code="en")
    intro = await _say(telegram, user, "/avatar")
    await _press(telegram, user, "avt:portrait", intro)
    await _say(telegram, user, "Me")
    for i in DISTINCT[:2]:
        await _send(telegram, telegram.message_update(user, photo=face_photo(i)))
    await jobs_done(app, timeout=40)
    [status] = _statuses(telegram, user)
    assert _buttons_in_chat(telegram, user) == [("▶ Review and start", "avw:review")]

    # Abandoned for longer than a draft is kept: the sweep discards it, and its status says so.
    async with unit_of_work(app.services.sessions) as session:
        avatar = await session.scalar(select(Avatar).where(Avatar.user_id == user.id))
        assert avatar is not None
        avatar.updated_at = datetime.now(UTC) - timedelta(days=2)
    assert (await app.services.recovery.run_once())["avatars.stuck"] == 1
    assert await count(db, Avatar, Avatar.user_id == user.id) == 0
    assert _buttons_in_chat(telegram, user) == []
    assert _message(telegram, user, status["message_id"])["text"] == (
        "📸 The draft Me has expired, and its photos are deleted. Send /avatar to start again."
    )


async def test_a_second_review_of_the_same_photos_does_not_send_the_album_again(
    telegram: FakeTelegramServer, avatar_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    app: Runtime = await start_app(avatar_settings(avatar_min_photos=2, avatar_max_photos=3))
    user = FakeUser(id=7553, language_code="en")
    intro = await _say(telegram, user, "/avatar")
    await _press(telegram, user, "avt:portrait", intro)
    await _say(telegram, user, "Me")
    for i in DISTINCT[:2]:
        await _send(telegram, telegram.message_update(user, photo=face_photo(i)))
    await jobs_done(app, timeout=40)
    [status] = _statuses(telegram, user)

    await _press_on(telegram, user, "avw:review", status["message_id"])
    [album] = telegram.calls_of("sendMediaGroup")
    assert len(album.params["media"]) == 2
    first = telegram.calls_of("sendMessage")[-1]
    assert "The photos are in the album above." not in first.params["text"]

    # The same draft, unchanged: the review again, pointing at the album it already sent.
    await _press_on(telegram, user, "avw:review", status["message_id"])
    assert len(telegram.calls_of("sendMediaGroup")) == 1
    second = telegram.calls_of("sendMessage")[-1]
    assert second.result["message_id"] != first.result["message_id"]
    assert "2 photos accepted.\nThe photos are in the album above.\nTraining costs" in second.params["text"]
    assert [data for _, data in buttons(second)] == ["avw:top", "avw:cancel"]  # no credits yet
    older = _message(telegram, user, first.result["message_id"])
    assert not (older.get("reply_markup") or {}).get("inline_keyboard")  # the older review's went

    # One more photo: the draft changed, so the review shows its album again.
    await _send(telegram, telegram.message_update(user, photo=face_photo(DISTINCT[2])))
    await jobs_done(app, timeout=40)
    await _press_on(telegram, user, "avw:review", status["message_id"])
    albums = telegram.calls_of("sendMediaGroup")
    assert len(albums) == 2 and len(albums[-1].params["media"]) == 3
    assert "album above" not in telegram.calls_of("sendMessage")[-1].params["text"]
