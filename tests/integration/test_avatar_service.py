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
from aisha.avatars.models import Avatar, AvatarPhoto, AvatarStatus, AvatarType
from aisha.avatars.service import AvatarNotifier, AvatarRules, AvatarService, photo_prefix
from aisha.avatars.training import TrainingRequest, TrainingState
from aisha.avatars.validation import PhotoValidator
from aisha.billing.errors import InsufficientCredits
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.i18n import Translator
from aisha.messaging import Buttons
from aisha.providers.fal import FalRequestRefused, FalUnavailable, TrainingOutput
from aisha.providers.fal_webhook import FalWebhook
from aisha.storage import LocalStorage
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
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.sent: list[tuple[int, str, Buttons | None]] = []

    async def send_text(
        self, chat_id: int, text: str, *, buttons: Buttons | None = None, reply_to: int | None = None
    ) -> int:
        self.sent.append((chat_id, text, buttons))
        return len(self.sent)

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, buttons: Buttons | None = None
    ) -> None:
        return None

    async def send_document(
        self, chat_id: int, *, file_name: str, data: bytes, caption: str | None = None
    ) -> None:
        return None

    async def send_chat_action(self, chat_id: int, action: str) -> None:
        return None

    async def download(self, file_id: str, destination: Path) -> int:
        destination.write_bytes(self.files[file_id])
        return len(self.files[file_id])


class ScriptedTrainer:
    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.fail_submit: Exception | None = None
        self.fail_upload: Exception | None = None
        self.uploads: list[bytes] = []
        self.state_answer = TrainingState.QUEUED

    async def upload_archive(self, data: bytes) -> str:
        if self.fail_upload is not None:
            raise self.fail_upload
        self.uploads.append(data)
        return f"https://fal.media/files/upload-{len(self.uploads)}.zip"

    async def submit(
        self, *, avatar_type: AvatarType, images_url: str, trigger_phrase: str, webhook_url: str | None
    ) -> TrainingRequest:
        if self.fail_submit is not None:
            raise self.fail_submit
        request_id = f"req-{len(self.submitted) + 1}"
        self.submitted.append({"url": images_url, "trigger": trigger_phrase, "webhook": webhook_url})
        return TrainingRequest(endpoint="fal-ai/trainer", request_id=request_id, payload={"steps": 1})

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState:
        return self.state_answer

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        return TrainingOutput(lora_url="https://fal/lora.safetensors", config_url=None)

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        self.cancelled.append(request_id)


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

        async def enqueue(avatar_id: uuid.UUID) -> None:
            self.enqueued.append(avatar_id)

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
            rules=AvatarRules(min_photos=2, max_photos=3, public_base_url="https://bot.example"),
            enqueue_training=enqueue,
        )

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
            files: dict[str, bytes] = {}
            for i, data in enumerate((PHOTO_A, PHOTO_B, PHOTO_C)[:photos]):
                key = f"{photo_prefix(OWNER, avatar.id)}/photos/{i}.jpg"
                files[key] = data
                session.add(
                    AvatarPhoto(
                        avatar_id=avatar.id,
                        storage_key=key,
                        sha256=f"{i:064x}",
                        perceptual_hash=f"{i:016x}",
                        size_bytes=len(data),
                        width=600,
                        height=600,
                        metrics={},
                    )
                )
        for key, data in files.items():  # files after the commit: no storage call in a transaction
            await self.storage.put(key, data)
        return avatar.id

    async def submitted(self) -> uuid.UUID:
        avatar_id = await self.draft(photos=2)
        # Time moves on (an unchanged updated_at would be stamped by the column's wall-clock onupdate).
        self.clock.advance(timedelta(seconds=1))
        async with unit_of_work(self.db.sessions) as session:
            await self.service.confirm(session=session, user_id=OWNER, avatar_id=avatar_id)
        await self.service.train(avatar_id=avatar_id)
        return avatar_id

    async def avatar(self, avatar_id: uuid.UUID) -> Avatar:
        async with self.db.sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            assert avatar is not None
            return avatar

    async def balance(self) -> int:
        async with self.db.sessions() as session:
            return await self.ledger.get_balance(session=session, user_id=OWNER)

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


async def test_parallel_photos_respect_the_limit_and_duplicates_under_the_lock(world: World) -> None:
    avatar_id = await world.draft()

    async def send(*file_ids: str) -> list[Any]:
        return list(
            await asyncio.gather(
                *(
                    world.service.intake_photo(user_id=OWNER, avatar_id=avatar_id, file_id=f, reply_to=n)
                    for n, f in enumerate(file_ids)
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
    texts = [text for _, text, _ in world.messenger.sent]
    assert len(texts) == 5 and any("3 of 2 accepted." in t for t in texts)
    assert any("you already have the maximum of 3 photos" in t for t in texts)


async def test_a_photo_for_someone_elses_draft_is_ignored(world: World) -> None:
    avatar_id = await world.draft()
    assert (
        await world.service.intake_photo(user_id=OTHER, avatar_id=avatar_id, file_id="A", reply_to=1) is None
    )
    assert world.files(avatar_id) == [] and world.messenger.sent == []


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
    assert (
        world.trainer.submitted[0]["webhook"]
        == f"https://bot.example/webhooks/fal?kind=avatar&id={avatar_id}"
    )
    assert world.trainer.submitted[0]["url"].endswith("/training.zip")
    await world.service.train(avatar_id=avatar_id)  # a repeated job does nothing
    assert len(world.trainer.submitted) == 1

    webhook = FalWebhook(
        request_id="req-1",
        status="OK",
        payload={
            "diffusers_lora_file": {"url": "https://fal/l.safetensors"},
            "config_file": {"url": "https://fal/c.json"},
        },
    )
    forged = FalWebhook(request_id="req-other", status="ERROR", payload=None, error="x")
    assert await world.service.apply_webhook(avatar_id=avatar_id, webhook=forged) is False
    results = await asyncio.gather(
        *(world.service.apply_webhook(avatar_id=avatar_id, webhook=webhook) for _ in range(4)),
        world.service.sweep(),
    )
    assert results[:4].count(True) == 1
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.READY and avatar.is_main
    assert avatar.lora_url == "https://fal/l.safetensors" and avatar.config_url == "https://fal/c.json"
    assert (await world.entries()).count(EntryKind.CAPTURE) == 1
    assert await world.balance() == FUNDS - PRICE
    assert world.files(avatar_id) == [] and avatar.photos_deleted_at is not None


async def test_refusal_rolls_the_hold_back(world: World) -> None:
    world.trainer.fail_submit = FalRequestRefused(422, "bad input")
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and avatar.hold_id is None
    assert await world.balance() == FUNDS and await world.entries() == [EntryKind.BONUS]
    assert "refused the job" in world.messenger.sent[-1][1]


async def test_unknown_submit_outcome_keeps_the_hold_and_the_webhook_settles_it(world: World) -> None:
    world.trainer.fail_submit = FalUnavailable("reset", maybe_submitted=True)
    avatar_id = await world.submitted()
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.SUBMITTED and avatar.provider_request_id is None
    assert await world.balance() == FUNDS - PRICE
    webhook = FalWebhook(request_id="late-1", status="ERROR", payload=None, error="boom")
    assert await world.service.apply_webhook(avatar_id=avatar_id, webhook=webhook)
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.FAILED and avatar.provider_request_id == "late-1"
    assert await world.balance() == FUNDS


async def test_a_transient_outage_leaves_the_avatar_pending_for_the_sweep(world: World) -> None:
    world.trainer.fail_submit = FalUnavailable("down")
    with pytest.raises(FalUnavailable):
        await world.submitted()
    async with world.db.sessions() as session:
        pending = (await session.scalars(select(Avatar).where(Avatar.status == AvatarStatus.PENDING))).all()
    assert len(pending) == 1 and await world.balance() == FUNDS
    world.clock.advance(timedelta(minutes=20))
    assert await world.service.sweep() == 1
    assert world.enqueued == [pending[0].id]


async def test_timeout_cancels_at_the_provider_fails_and_releases(world: World) -> None:
    avatar_id = await world.submitted()
    world.clock.advance(timedelta(minutes=20))
    await world.service.sweep()  # polled: still queued
    assert (await world.avatar(avatar_id)).status is AvatarStatus.SUBMITTED
    world.clock.advance(timedelta(hours=3))
    assert await world.service.sweep() >= 1
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


async def test_an_archive_that_cannot_reach_fal_fails_without_charging(db: Database, tmp_path: Path) -> None:
    world = World(db, tmp_path, signer=False)
    world.trainer.fail_upload = FalUnavailable("FAL storage is unreachable: ConnectError")
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
    assert await world.service.sweep() == 1
    assert world.files(avatar_id) == []
    async with world.db.sessions() as session:
        assert await session.get(Avatar, avatar_id) is None
