"""AvatarService on real databases and real storage, with a scripted trainer and messenger."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import skimage.data
from PIL import Image, ImageOps
from sqlalchemy import select

from aisha.avatars.errors import AvatarNotFound, NotEnoughPhotos, WrongAvatarStatus
from aisha.avatars.models import Avatar, AvatarPhoto, AvatarRules, AvatarStatus, AvatarType, TrainingOutput
from aisha.avatars.photos import PhotoUpload
from aisha.avatars.ports import TrainingRequest, TrainingState
from aisha.avatars.service import AvatarService, photo_prefix
from aisha.avatars.validation import PhotoValidator
from aisha.billing.errors import InsufficientCredits
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.bot.presenters.avatars import REVIEW_CALLBACK, AvatarNotifier
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.i18n import Translator
from aisha.messaging import Button, Buttons
from aisha.operations import PaidOperations
from aisha.providers.fal import parse_training_result
from aisha.remote import RemoteRefused, RemoteUnavailable, RemoteWebhook
from aisha.storage import LocalStorage
from aisha.storage.public import PublicRoute
from aisha.users.locks import UserLocks
from aisha.users.models import User
from tests.conftest import Database

OWNER, OTHER = 11, 12
PRICE = PriceList().avatar_portrait
FUNDS = PRICE + 50


def _jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


ASTRONAUT = Image.fromarray(skimage.data.astronaut())
PHOTO_A = _jpeg(ASTRONAUT.resize((600, 600)))
PHOTO_B = _jpeg(ImageOps.mirror(ASTRONAUT.crop((40, 30, 470, 460)).resize((600, 600))))
PHOTO_C = _jpeg(ASTRONAUT.crop((0, 40, 430, 470)).resize((640, 640)).rotate(8, fillcolor=(90, 110, 140)))
PHOTO_D = _jpeg(ImageOps.mirror(ASTRONAUT.crop((48, 0, 478, 430)).resize((600, 600)).rotate(-8)))


class ScriptedMessenger:
    """Keeps what each message reads now, and refuses an edit that changes nothing, as Telegram."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.sent: list[tuple[int, str, Buttons | None]] = []
        self.shown: dict[int, tuple[str, Buttons | None]] = {}  # message id: its text and buttons
        self.versions: list[str] = []  # every text sent or edited in, in order
        self.delay = 0.0  # seconds each call takes: concurrent jobs overlap

    async def send_text(
        self, chat_id: int, text: str, *, buttons: Buttons | None = None, reply_to: int | None = None
    ) -> int:
        await asyncio.sleep(self.delay)
        self.sent.append((chat_id, text, buttons))
        self.shown[len(self.sent)] = (text, buttons)
        self.versions.append(text)
        return len(self.sent)

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, buttons: Buttons | None = None
    ) -> None:
        await asyncio.sleep(self.delay)
        assert self.shown[message_id] != (text, buttons), "message is not modified"
        self.shown[message_id] = (text, buttons)
        self.versions.append(text)

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        assert self.shown[message_id][1], "message is not modified"
        self.shown[message_id] = (self.shown[message_id][0], None)

    async def send_document(
        self, chat_id: int, *, file_name: str, data: bytes, caption: str | None = None
    ) -> None:
        return None

    async def send_chat_action(self, chat_id: int, action: str) -> None:
        return None

    async def download(self, file_id: str, destination: Path, *, max_bytes: int | None = None) -> int:
        destination.write_bytes(self.files[file_id])
        return len(self.files[file_id])


class ScriptedTrainer:
    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.fail_submit: Exception | None = None
        self.fail_upload: Exception | None = None
        self.uploads: list[bytes] = []
        self.upload_expiries: list[int] = []
        self.state_answer = TrainingState.QUEUED
        self.attempts = 0  # calls to submit, answered or not

    async def upload_archive(self, data: bytes, *, expires_in: int) -> str:
        if self.fail_upload is not None:
            raise self.fail_upload
        self.uploads.append(data)
        self.upload_expiries.append(expires_in)
        return f"https://fal.media/files/upload-{len(self.uploads)}.zip"

    async def submit(
        self, *, avatar_type: AvatarType, images_url: str, trigger_phrase: str, avatar_id: uuid.UUID
    ) -> TrainingRequest:
        self.attempts += 1
        if self.fail_submit is not None:
            raise self.fail_submit
        request_id = f"req-{len(self.submitted) + 1}"
        self.submitted.append({"url": images_url, "trigger": trigger_phrase, "avatar_id": avatar_id})
        return TrainingRequest(endpoint="fal-ai/trainer", request_id=request_id, payload={"steps": 1})

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState:
        return self.state_answer

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        return TrainingOutput(lora_url="https://fal/lora.safetensors", config_url=None)

    def parse_output(self, payload: dict[str, Any]) -> TrainingOutput:
        parsed = parse_training_result(payload)  # FAL's shape, as the scripted webhooks carry it
        return TrainingOutput(lora_url=parsed.lora_url, config_url=parsed.config_url)

    def endpoint(self, avatar_type: AvatarType) -> str:
        return "fal-ai/trainer"

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        self.cancelled.append(request_id)

    async def download(self, url: str) -> bytes:
        raise AssertionError("no copy of the LoRA is made here")


class World:
    def __init__(self, db: Database, tmp_path: Path, *, signer: bool = True) -> None:
        self.db = db
        self.clock = FrozenClock()
        self.storage = LocalStorage(
            tmp_path / "files",
            url_signer=(lambda key, ttl: f"https://bot.example/files/{key}") if signer else None,
        )
        self.ledger = LedgerService(clock=self.clock, hold_ttl=timedelta(hours=6))
        self.messenger = ScriptedMessenger(
            {"A": PHOTO_A, "A2": PHOTO_A, "B": PHOTO_B, "C": PHOTO_C, "D": PHOTO_D}
        )
        self.trainer = ScriptedTrainer()
        self.enqueued: list[uuid.UUID] = []
        self.kept: list[uuid.UUID] = []  # `avatars.keep_lora` jobs queued
        self.photo_jobs: list[dict[str, Any]] = []  # `avatars.photo` jobs queued

        async def enqueue(avatar_id: uuid.UUID) -> None:
            self.enqueued.append(avatar_id)

        async def enqueue_keep(avatar_id: uuid.UUID) -> None:
            self.kept.append(avatar_id)

        async def enqueue_photo(**photo: Any) -> None:
            self.photo_jobs.append(photo)

        self.service = AvatarService(
            sessions=db.sessions,
            clock=self.clock,
            storage=self.storage,
            ledger=self.ledger,
            prices=PriceList(),
            validator=PhotoValidator(nsfw=None),
            trainer=self.trainer,
            messenger=self.messenger,
            notifier=AvatarNotifier(messenger=self.messenger, translator=Translator.load()),
            rules=AvatarRules(
                min_photos=2,
                max_photos=3,
                archive_route=PublicRoute.SIGNED_LINK if signer else PublicRoute.PROVIDER_UPLOAD,
            ),
            operations=PaidOperations(UserLocks()),
            enqueue_training=enqueue,
            enqueue_keep=enqueue_keep,
            enqueue_photo=enqueue_photo,
        )
        self.flow, self.photos = self.service.flow, self.service.photos

    async def users(self, credits: int = FUNDS) -> None:
        async with unit_of_work(self.db.sessions) as session:
            for user_id in (OWNER, OTHER):
                session.add(
                    User(
                        telegram_id=user_id,
                        language="en",
                        created_at=self.clock.now(),
                        last_seen_at=self.clock.now(),
                    )
                )
            await session.flush()
            if credits:
                await self.ledger.credit(
                    session=session, user_id=OWNER, amount=credits, key="seed", kind=EntryKind.BONUS
                )

    async def draft(self, photos: int = 0) -> uuid.UUID:
        async with unit_of_work(self.db.sessions) as session:
            avatar = await self.service.create_draft(
                session=session, user_id=OWNER, avatar_type=AvatarType.PORTRAIT, name="Me"
            )
            avatar_id = avatar.id
        stored = []
        for i, data in enumerate((PHOTO_A, PHOTO_B, PHOTO_C)[:photos]):
            key = f"{photo_prefix(OWNER, avatar_id)}/photos/{i}.jpg"
            await self.storage.put(key, data)  # files first: no storage call inside a transaction
            stored.append((i, key, data))
        async with unit_of_work(self.db.sessions) as session:
            for i, key, data in stored:
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

    async def submitted(self) -> uuid.UUID:
        avatar_id = await self.draft(photos=2)
        # Time moves on (an unchanged updated_at would be stamped by the column's wall-clock onupdate).
        self.clock.advance(timedelta(seconds=1))
        async with unit_of_work(self.db.sessions) as session:
            await self.service.confirm(session=session, user_id=OWNER, avatar_id=avatar_id)
        await self.flow.train(avatar_id=avatar_id)
        return avatar_id

    async def avatar(self, avatar_id: uuid.UUID) -> Avatar:
        async with self.db.sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            assert avatar is not None
            return avatar

    async def balance(self) -> int:
        async with self.db.sessions() as session:
            return await self.ledger.get_balance(session=session, user_id=OWNER)

    async def settled(self) -> None:
        """No hold is left active and every account adds up (what `aisha ledger verify` checks)."""
        async with self.db.sessions() as session:
            assert await self.ledger.active_holds(session=session, user_id=OWNER) == []
            assert await self.ledger.verify_all(session=session) == []

    def texts(self) -> list[str]:
        return [text for _, text, _ in self.messenger.sent]

    async def entries(self) -> list[EntryKind]:
        async with self.db.sessions() as session:
            return list(
                await session.scalars(
                    select(CreditEntry.kind)
                    .where(CreditEntry.user_id == OWNER)
                    .order_by(CreditEntry.created_at, CreditEntry.id)
                )
            )

    def files(self, avatar_id: uuid.UUID) -> list[Path]:
        folder = self.storage.root / photo_prefix(OWNER, avatar_id)
        return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
async def world(db: Database, tmp_path: Path) -> World:
    w = World(db, tmp_path)
    await w.users()
    return w


async def test_a_photo_sent_to_the_wizard_is_numbered_and_queued_once_the_update_commits(
    world: World,
) -> None:
    avatar_id = await world.draft()
    for number, file_id in enumerate(("F1", "F2"), start=1):
        async with unit_of_work(world.db.sessions) as session:
            upload = PhotoUpload(file_id=file_id, file_size=1000, file_name=f"{file_id}.jpg")
            assert await world.photos.receive(
                session=session, user_id=OWNER, avatar_id=avatar_id, upload=upload
            )
            assert len(world.photo_jobs) == number - 1  # not before the commit
        assert world.photo_jobs[-1] == {
            "user_id": OWNER,
            "avatar_id": str(avatar_id),
            "file_id": file_id,
            "file_size": 1000,
            "number": number,
            "file_name": f"{file_id}.jpg",
        }
    # Someone else's draft, or none: nothing to add the photo to, nothing queued.
    async with unit_of_work(world.db.sessions) as session:
        upload = PhotoUpload(file_id="F3")
        assert not await world.photos.receive(
            session=session, user_id=OTHER, avatar_id=avatar_id, upload=upload
        )
    assert len(world.photo_jobs) == 2


async def test_parallel_photos_respect_the_limit_and_duplicates_under_the_lock(world: World) -> None:
    avatar_id = await world.draft()

    async def send(*file_ids: str) -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    world.photos.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id=f, number=n)
                    for n, f in enumerate(file_ids, start=1)
                )
            )
        )

    # The same photo twice at once: both pass the check alone; the lock lets only one in.
    first = await send("A", "A2", "B")
    assert sorted((o.accepted, o.reason) for o in first) == [(False, "duplicate"), (True, None), (True, None)]
    # Two more at once with room for one (max 3): one is refused with the limit.
    second = await send("C", "D")
    assert sorted((o.accepted, o.reason) for o in second) == [(False, "limit"), (True, None)]
    async with world.db.sessions() as session:
        rows = (await session.scalars(select(AvatarPhoto).where(AvatarPhoto.avatar_id == avatar_id))).all()
    assert len(rows) == 3 and len({r.sha256 for r in rows}) == 3
    assert len(world.files(avatar_id)) == 3
    # One status message, never counting past the maximum, ending on the final state.
    assert len(world.messenger.sent) == 1
    counts = [int(text.split("Accepted: ")[1].split()[0]) for text in world.messenger.versions]
    assert max(counts) == 3 and counts == sorted(counts)
    text, buttons = world.messenger.shown[1]
    assert "Accepted: 3 photos (you need 2–3).\nThat's the maximum. Review and start." in text
    assert "Not accepted: 2 photos\n• photo " in text
    assert "— same as another photo" in text and "— over the maximum" in text
    assert buttons == [[Button("▶ Review and start", REVIEW_CALLBACK)]]


async def test_a_photo_for_someone_elses_draft_is_ignored(world: World) -> None:
    avatar_id = await world.draft()
    assert await world.photos.intake_photo(user_id=OTHER, avatar_id=avatar_id, file_id="A", number=1) is None
    assert world.files(avatar_id) == [] and world.messenger.sent == []


async def test_a_photo_over_the_size_limit_is_refused_without_being_fetched(world: World) -> None:
    # A local Bot API server would fetch a 2 GB "photo" to its disk on getFile: the size the
    # message gave is enough to refuse it. "huge" is not among the messenger's files either.
    avatar_id = await world.draft()
    outcome = await world.photos.intake_photo(
        user_id=OWNER, avatar_id=avatar_id, file_id="huge", number=1, file_size=1_500 * 1024 * 1024
    )
    assert outcome is not None and (outcome.accepted, outcome.reason) == (False, "too_large")
    assert world.files(avatar_id) == []
    [(_, text, buttons)] = world.messenger.sent
    assert (
        text
        == "📸 Photos for <b>Me</b>\nAccepted: 0 photos (you need 2–3).\nSend at least 2 more photos.\n\nNot accepted: 1 photo\n• photo 1 — file too large"
    )
    assert buttons is None  # not enough photos to review


async def test_racing_photo_jobs_share_one_status_message_that_ends_on_the_final_count(world: World) -> None:
    # Telegram answers slowly: the jobs' turns at the message overlap, and the refusals (too
    # large, known without a download) commit while the first message is still being sent.
    world.messenger.delay = 0.05
    avatar_id = await world.draft(photos=1)
    jobs = [
        world.photos.intake_photo(
            user_id=OWNER, avatar_id=avatar_id, file_id=f"big-{n}", number=n, file_size=10**9
        )
        for n in range(1, 7)
    ]
    await asyncio.gather(*jobs)
    assert len(world.messenger.sent) == 1  # never a second status message
    text, _ = world.messenger.shown[1]
    assert "Not accepted: 6 photos" in text and "• photo 6 — file too large" in text
    assert "Accepted: 1 photo (you need 2–3)" in text
    # The turn was given back: a later photo is shown at once.
    await world.photos.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id="B", number=7)
    text, buttons = world.messenger.shown[1]
    assert "Accepted: 2 photos" in text and buttons == [[Button("▶ Review and start", REVIEW_CALLBACK)]]
    assert len(world.messenger.sent) == 1


async def test_confirm_and_cancel_take_the_status_buttons_away(world: World, db: Database) -> None:
    avatar_id = await world.draft(photos=1)
    await world.photos.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id="B", number=1)
    assert world.messenger.shown[1][1] is not None
    async with unit_of_work(db.sessions) as session:
        await world.service.confirm(session=session, user_id=OWNER, avatar_id=avatar_id)
    await world.photos.refresh_upload_status(user_id=OWNER, avatar_id=avatar_id)
    text, buttons = world.messenger.shown[1]
    assert buttons is None and text.endswith("Accepted: 2 photos (you need 2–3).")

    # Cancelled: the caller is told which message still has its button.
    other = await world.draft(photos=1)
    await world.photos.intake_photo(user_id=OWNER, avatar_id=other, file_id="C", number=1)
    async with unit_of_work(db.sessions) as session:
        discarded = await world.photos.discard_draft(session=session, user_id=OWNER, avatar_id=other)
    assert discarded is not None and discarded.status_message == 2


async def test_training_that_begins_during_an_edit_leaves_no_button_behind(
    world: World, db: Database
) -> None:
    avatar_id = await world.draft(photos=1)
    await world.photos.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id="B", number=1)
    messenger = world.messenger
    edit = messenger.edit_text

    async def confirmed_and_submitted_meanwhile(*args: Any, **kwargs: Any) -> None:
        # While Telegram takes the edit: the user starts training, and the job replaces the
        # draft's training_config with what FAL was sent (so the status state is gone).
        async with unit_of_work(db.sessions) as session:
            await world.service.confirm(session=session, user_id=OWNER, avatar_id=avatar_id)
        async with unit_of_work(db.sessions) as session:
            avatar = await session.get(Avatar, avatar_id)
            assert avatar is not None
            avatar.training_config = {"steps": 1}
        messenger.edit_text = edit  # type: ignore[method-assign]
        await edit(*args, **kwargs)

    messenger.edit_text = confirmed_and_submitted_meanwhile  # type: ignore[method-assign]
    await world.photos.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id="C", number=2)
    text, buttons = messenger.shown[1]
    assert "Accepted: 3 photos" in text and buttons is None  # the turn's holder took it away
    await world.photos.refresh_upload_status(user_id=OWNER, avatar_id=avatar_id)  # nothing more to do
    assert len(messenger.sent) == 1


async def test_confirm_needs_enough_photos_and_credits_and_writes_nothing_otherwise(
    world: World, db: Database
) -> None:
    few = await world.draft(photos=1)
    async with unit_of_work(db.sessions) as session:
        with pytest.raises(NotEnoughPhotos):
            await world.service.confirm(session=session, user_id=OWNER, avatar_id=few)
    async with unit_of_work(db.sessions) as session:
        await world.ledger.debit(session=session, user_id=OWNER, amount=100, key="spend")
    enough = await world.draft(photos=2)
    async with unit_of_work(db.sessions) as session:
        with pytest.raises(InsufficientCredits) as error:
            await world.service.confirm(session=session, user_id=OWNER, avatar_id=enough)
    assert error.value.shortfall == PRICE - (FUNDS - 100)
    assert (await world.avatar(enough)).status is AvatarStatus.DRAFT
    async with unit_of_work(db.sessions) as session:
        with pytest.raises(AvatarNotFound):
            await world.service.confirm(session=session, user_id=OTHER, avatar_id=enough)


async def test_training_holds_and_submits_together_and_racing_outcomes_apply_once(world: World) -> None:
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.SUBMITTED and avatar.provider_request_id == "req-1"
    assert avatar.hold_id is not None and await world.balance() == FUNDS - PRICE
    # The trainer is told whose training it is (FalTrainer puts it in FAL's webhook URL).
    assert world.trainer.submitted[0]["avatar_id"] == avatar_id
    assert world.trainer.submitted[0]["url"].endswith("/training.zip")
    await world.flow.train(avatar_id=avatar_id)  # a repeated job does nothing
    assert len(world.trainer.submitted) == 1

    webhook = RemoteWebhook(
        request_id="req-1",
        status="OK",
        payload={
            "diffusers_lora_file": {"url": "https://fal/l.safetensors"},
            "config_file": {"url": "https://fal/c.json"},
        },
    )
    forged = RemoteWebhook(request_id="req-other", status="ERROR", payload=None, error="x")
    assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=forged) is False
    results = await asyncio.gather(
        *(world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook) for _ in range(4)),
        world.flow.sweep(),
    )
    assert results[:4].count(True) == 1
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.READY and avatar.is_main
    assert avatar.lora_url == "https://fal/l.safetensors" and avatar.config_url == "https://fal/c.json"
    assert (await world.entries()).count(EntryKind.CAPTURE) == 1
    assert await world.balance() == FUNDS - PRICE
    assert world.files(avatar_id) == [] and avatar.photos_deleted_at is not None


async def test_a_refusal_releases_the_committed_hold_and_tells_once(world: World) -> None:
    world.trainer.fail_submit = RemoteRefused(422, "bad input")
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and avatar.error == "refused"
    # The hold was committed before FAL was asked; the refusal gives it back.
    assert await world.balance() == FUNDS
    assert await world.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    assert len(world.texts()) == 1 and "refused the job" in world.texts()[0]
    await world.flow.train(avatar_id=avatar_id)
    assert world.trainer.attempts == 1 and len(world.texts()) == 1
    await world.settled()


async def test_unknown_submit_outcome_keeps_the_hold_is_never_resubmitted_and_the_webhook_settles_it(
    world: World,
) -> None:
    world.trainer.fail_submit = RemoteUnavailable("reset", maybe_submitted=True)
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.SUBMITTING and avatar.provider_request_id is None
    assert await world.balance() == FUNDS - PRICE
    # The job again (redelivered, or re-enqueued): FAL may have it, so it is not sent twice.
    world.trainer.fail_submit = None
    await world.flow.train(avatar_id=avatar_id)
    world.clock.advance(timedelta(minutes=20))
    await world.flow.sweep()
    assert world.trainer.attempts == 1 and world.enqueued == []
    assert (await world.avatar(avatar_id)).status is AvatarStatus.SUBMITTING

    webhook = RemoteWebhook(request_id="late-1", status="ERROR", payload=None, error="boom")
    assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and avatar.provider_request_id == "late-1"
    assert await world.balance() == FUNDS
    assert len(world.texts()) == 1 and "Training of <b>Me</b> failed" in world.texts()[0]
    await world.settled()


async def test_an_unknown_outcome_with_no_webhook_is_failed_and_released_after_the_timeout(
    world: World,
) -> None:
    world.trainer.fail_submit = RemoteUnavailable("ReadTimeout", maybe_submitted=True)
    avatar_id = await world.submitted()
    world.clock.advance(timedelta(hours=2))
    await world.flow.sweep()  # nothing to poll: no request id
    assert (await world.avatar(avatar_id)).status is AvatarStatus.SUBMITTING
    assert await world.balance() == FUNDS - PRICE and world.texts() == []
    world.clock.advance(timedelta(hours=1, seconds=1))
    assert await world.flow.sweep() >= 1
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and avatar.error == "timeout"
    assert await world.balance() == FUNDS
    assert world.trainer.cancelled == [] and world.trainer.attempts == 1
    await world.flow.sweep()
    assert len(world.texts()) == 1 and "it took too long" in world.texts()[0]
    # FAL's late webhook finds the avatar settled and changes nothing.
    webhook = RemoteWebhook(
        request_id="late-2", status="OK", payload={"diffusers_lora_file": {"url": "https://fal/l"}}
    )
    assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook) is False
    assert await world.balance() == FUNDS
    await world.settled()


async def test_a_crash_after_fal_accepted_is_settled_by_the_webhook_and_charged_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(avatar_id: uuid.UUID, request: Any) -> None:
        raise ConnectionError("the process died before FAL's answer was recorded")

    monkeypatch.setattr(world.flow, "_submitted", crash)
    with pytest.raises(ConnectionError):
        await world.submitted()
    monkeypatch.undo()
    async with world.db.sessions() as session:
        avatar = await session.scalar(select(Avatar))
    assert avatar is not None and avatar.status is AvatarStatus.SUBMITTING
    assert avatar.provider_request_id is None and await world.balance() == FUNDS - PRICE
    await world.flow.train(avatar_id=avatar.id)  # the job is redelivered after the crash
    assert world.trainer.attempts == 1

    webhook = RemoteWebhook(
        request_id="req-1",
        status="OK",
        payload={"diffusers_lora_file": {"url": "https://fal/l.safetensors"}},
    )
    assert await world.flow.apply_webhook(avatar_id=avatar.id, webhook=webhook)
    assert await world.flow.apply_webhook(avatar_id=avatar.id, webhook=webhook) is False
    ready = await world.avatar(avatar.id)
    assert ready.status is AvatarStatus.READY and ready.provider_request_id == "req-1"
    assert await world.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]
    assert await world.balance() == FUNDS - PRICE
    assert len(world.texts()) == 1 and "is ready" in world.texts()[0]
    await world.settled()


async def test_a_webhook_faster_than_the_recorded_answer_wins_and_the_answer_changes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = world.flow._submitted
    webhook = RemoteWebhook(
        request_id="req-1", status="OK", payload={"diffusers_lora_file": {"url": "https://fal/l"}}
    )

    async def webhook_first(avatar_id: uuid.UUID, request: Any) -> None:
        assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)
        await record(avatar_id, request)

    monkeypatch.setattr(world.flow, "_submitted", webhook_first)
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.READY and avatar.provider_request_id == "req-1"
    assert (await world.entries()).count(EntryKind.CAPTURE) == 1
    await world.settled()


async def test_a_certain_outage_keeps_the_hold_and_the_sweep_sends_it_once_more(world: World) -> None:
    world.trainer.fail_submit = RemoteUnavailable("down")  # nothing reached FAL
    with pytest.raises(RemoteUnavailable):
        await world.submitted()
    async with world.db.sessions() as session:
        pending = (await session.scalars(select(Avatar).where(Avatar.status == AvatarStatus.PENDING))).all()
    assert len(pending) == 1 and pending[0].hold_id is not None
    assert await world.balance() == FUNDS - PRICE
    world.clock.advance(timedelta(minutes=20))
    assert await world.flow.sweep() == 1
    assert world.enqueued == [pending[0].id]
    world.trainer.fail_submit = None
    await world.flow.train(avatar_id=pending[0].id)
    avatar = await world.avatar(pending[0].id)
    assert avatar.status is AvatarStatus.SUBMITTED and avatar.hold_id == pending[0].hold_id
    assert await world.entries() == [EntryKind.BONUS, EntryKind.HOLD]  # held once for both tries
    assert world.texts() == []


async def test_a_certain_outage_past_the_timeout_fails_and_releases(world: World) -> None:
    world.trainer.fail_submit = RemoteUnavailable("down")
    with pytest.raises(RemoteUnavailable):
        await world.submitted()
    for _ in range(12):  # the sweep keeps trying; the first try's time still counts
        world.clock.advance(timedelta(minutes=16))
        await world.flow.sweep()
        async with world.db.sessions() as session:
            avatar = await session.scalar(select(Avatar))
        assert avatar is not None
        if avatar.status is AvatarStatus.PENDING:
            with pytest.raises(RemoteUnavailable):
                await world.flow.train(avatar_id=avatar.id)
    assert avatar.status is AvatarStatus.FAILED and await world.balance() == FUNDS
    assert len(world.texts()) == 1 and "it took too long" in world.texts()[0]
    await world.settled()


async def test_timeout_cancels_at_the_provider_fails_and_releases(world: World) -> None:
    avatar_id = await world.submitted()
    world.clock.advance(timedelta(minutes=20))
    await world.flow.sweep()  # polled: still queued
    assert (await world.avatar(avatar_id)).status is AvatarStatus.SUBMITTED
    world.clock.advance(timedelta(hours=3))
    assert await world.flow.sweep() >= 1
    assert world.trainer.cancelled == ["req-1"]
    assert (await world.avatar(avatar_id)).status is AvatarStatus.FAILED
    assert await world.balance() == FUNDS
    assert "it took too long" in world.messenger.sent[-1][1]


async def test_without_a_public_url_the_archive_goes_to_fal_storage(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path, signer=False)
    await world.users()
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.SUBMITTED
    assert world.trainer.submitted[0]["url"] == "https://fal.media/files/upload-1.zip"
    assert world.trainer.uploads[0][:2] == b"PK"  # the zip itself
    assert world.trainer.upload_expiries == [4 * 3600]  # the 3-hour training limit and an hour
    assert not any(p.name == "training.zip" for p in (tmp_path / "files").rglob("*"))  # not kept here


async def test_an_archive_that_cannot_reach_fal_fails_without_charging(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path, signer=False)
    world.trainer.fail_upload = RemoteUnavailable("FAL storage is unreachable: ConnectError")
    await world.users()
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and world.trainer.submitted == []
    assert await world.balance() == FUNDS


async def test_gallery_operations_are_for_the_owner_only(world: World, db: Database) -> None:
    avatar_id = await world.submitted()
    async with unit_of_work(db.sessions) as session:
        for operation in (
            world.service.set_main(session=session, user_id=OTHER, avatar_id=avatar_id),
            world.service.rename(session=session, user_id=OTHER, avatar_id=avatar_id, name="x"),
            world.service.delete(session=session, user_id=OTHER, avatar_id=avatar_id),
            world.service.sample_photos(session=session, user_id=OTHER, avatar_id=avatar_id),
        ):
            with pytest.raises(AvatarNotFound):
                await operation
        assert await world.service.list_avatars(session=session, user_id=OTHER) == []
        with pytest.raises(WrongAvatarStatus):  # in training: its hold must resolve first
            await world.service.delete(session=session, user_id=OWNER, avatar_id=avatar_id)
        assert (
            len(await world.service.sample_photos(session=session, user_id=OWNER, avatar_id=avatar_id)) == 2
        )
        views = await world.service.list_avatars(session=session, user_id=OWNER)
        assert [(v.status, v.queue_position) for v in views] == [(AvatarStatus.SUBMITTED, 1)]


async def test_abandoned_drafts_and_their_files_are_swept(world: World) -> None:
    avatar_id = await world.draft(photos=2)
    assert len(world.files(avatar_id)) == 2
    world.clock.advance(timedelta(hours=25))
    assert await world.flow.sweep() == 1
    assert world.files(avatar_id) == []
    async with world.db.sessions() as session:
        assert await session.get(Avatar, avatar_id) is None


async def test_deleting_an_avatar_removes_its_files_only_once_the_deletion_committed(world: World) -> None:
    avatar_id = await world.submitted()
    webhook = RemoteWebhook(
        request_id="req-1", status="OK", payload={"diffusers_lora_file": {"url": "https://fal/l"}}
    )
    assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)
    # A kept file (retention would keep the photos; here a sample the gallery shows).
    key = f"{photo_prefix(OWNER, avatar_id)}/kept.jpg"
    await world.storage.put(key, PHOTO_A)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with unit_of_work(world.db.sessions) as session:
            await world.service.delete(session=session, user_id=OWNER, avatar_id=avatar_id)
            assert len(world.files(avatar_id)) == 1  # nothing deleted while the transaction is open
            raise Abort
    assert (await world.avatar(avatar_id)).status is AvatarStatus.READY
    assert len(world.files(avatar_id)) == 1

    async with unit_of_work(world.db.sessions) as session:
        await world.service.delete(session=session, user_id=OWNER, avatar_id=avatar_id)
    assert world.files(avatar_id) == []
