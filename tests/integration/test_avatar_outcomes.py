"""Training outcomes through the real FalTrainer and FalClient against the fake FAL queue: a job
the model failed is released at once in webhook and polling modes (an outage stays a retry), and
a trained LoRA is copied into our storage, even when the process died before the copy."""

from __future__ import annotations

import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from aisha.avatars.models import (
    CONFIG_KEY,
    LORA_KEY,
    LORA_LOST,
    Avatar,
    AvatarRules,
    AvatarStatus,
    AvatarType,
)
from aisha.avatars.service import AvatarService, lora_prefix
from aisha.avatars.validation import PhotoValidator
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.bot.presenters.avatars import AvatarNotifier
from aisha.clock import FrozenClock
from aisha.db.session import unit_of_work
from aisha.i18n import Translator
from aisha.operations import PaidOperations
from aisha.providers.fal import FalClient
from aisha.providers.fal_training import FalTrainer, TrainerConfig
from aisha.providers.fal_webhook import parse_webhook
from aisha.remote import RemoteWebhook
from aisha.sandbox.fal import FakeFalServer, png_bytes
from aisha.sandbox.faults import Fault
from aisha.storage import LocalStorage
from aisha.users.locks import UserLocks
from aisha.users.models import User
from tests.conftest import Database
from tests.integration.test_avatar_service import ScriptedMessenger

OWNER = 21
PRICE = PriceList().avatar_portrait
FUNDS = PRICE + 50
PORTRAIT = "fal-ai/flux-lora-portrait-trainer"


class World:
    def __init__(self, db: Database, tmp_path: Path, fal: FakeFalServer, http: httpx.AsyncClient) -> None:
        self.db, self.fal = db, fal
        self.clock = FrozenClock()
        self.storage = LocalStorage(tmp_path / "files")
        self.ledger = LedgerService(clock=self.clock, hold_ttl=timedelta(hours=6))
        self.messenger = ScriptedMessenger({})
        self.client = FalClient(key=fal.key, queue_url=fal.base_url, http=http, backoff_base=0.01)
        self.kept: list[uuid.UUID] = []  # `avatars.keep_lora` jobs queued

        async def enqueue(avatar_id: uuid.UUID) -> None:
            raise AssertionError("training is not started here")

        async def enqueue_photo(**photo: object) -> None:
            raise AssertionError("no photos are sent here")

        async def enqueue_keep(avatar_id: uuid.UUID) -> None:
            self.kept.append(avatar_id)

        self.service = AvatarService(
            sessions=db.sessions,
            clock=self.clock,
            storage=self.storage,
            ledger=self.ledger,
            prices=PriceList(),
            validator=PhotoValidator(nsfw=None),
            trainer=FalTrainer(
                self.client,
                TrainerConfig(
                    PORTRAIT,
                    "fal-ai/flux-lora-fast-training",
                    2500,
                    1000,
                    public_base_url="https://bot.example",
                ),
            ),
            messenger=self.messenger,
            notifier=AvatarNotifier(messenger=self.messenger, translator=Translator.load()),
            rules=AvatarRules(),
            operations=PaidOperations(UserLocks()),
            enqueue_training=enqueue,
            enqueue_keep=enqueue_keep,
            enqueue_photo=enqueue_photo,
        )
        self.flow = self.service.flow

    async def training(self) -> tuple[uuid.UUID, str]:
        """An avatar FAL is training, its credits held: (its id, FAL's request id)."""
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            for n in range(10):
                zipped.writestr(f"{n:02d}.png", png_bytes(512, 512, (n * 20, 90, 120)))
        images_url = self.fal.host_file("training.zip", archive.getvalue(), "application/zip")
        submission = await self.client.submit(PORTRAIT, {"images_data_url": images_url})
        avatar_id = uuid.uuid4()
        async with unit_of_work(self.db.sessions) as session:
            session.add(
                User(
                    telegram_id=OWNER,
                    language="en",
                    created_at=self.clock.now(),
                    last_seen_at=self.clock.now(),
                )
            )
            await session.flush()
            await self.ledger.credit(
                session=session, user_id=OWNER, amount=FUNDS, key="seed", kind=EntryKind.BONUS
            )
            hold = await self.ledger.hold(
                session=session, user_id=OWNER, amount=PRICE, key=f"avatar:{avatar_id}:hold", reference="t"
            )
            session.add(
                Avatar(
                    id=avatar_id,
                    user_id=OWNER,
                    type=AvatarType.PORTRAIT,
                    status=AvatarStatus.SUBMITTED,
                    name="Me",
                    trigger_phrase="ohwxoutcome01",
                    provider_endpoint=PORTRAIT,
                    provider_request_id=submission.request_id,
                    hold_id=hold.hold_id,
                    price=PRICE,
                    submitted_at=self.clock.now(),
                    training_config={"steps": 2500},
                )
            )
        return avatar_id, submission.request_id

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
            rows = await session.scalars(
                select(CreditEntry.kind)
                .where(CreditEntry.user_id == OWNER)
                .order_by(CreditEntry.created_at, CreditEntry.id)
            )
            return list(rows)

    def told(self) -> list[str]:
        return [text for _, text, _ in self.messenger.sent]


@pytest.fixture
async def world(db: Database, tmp_path: Path) -> AsyncIterator[World]:
    async with FakeFalServer() as fal, httpx.AsyncClient() as http:
        yield World(db, tmp_path, fal, http)
        assert fal.errors == []


async def _assert_failed_once(w: World, avatar_id: uuid.UUID) -> None:
    assert (await w.avatar(avatar_id)).status is AvatarStatus.FAILED
    assert await w.balance() == FUNDS
    assert await w.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    assert w.told() == [
        "😔 Training of <b>Me</b> failed: the training service reported an error.\n"
        "You were not charged: the reserved credits are back on your balance."
    ]


# --- a job the model failed ------------------------------------------------------------------


@pytest.mark.parametrize("error", [(500, "internal_server_error"), (422, "face_detection_error")])
async def test_polling_a_training_the_model_failed_releases_it_at_once(
    world: World, error: tuple[int, str]
) -> None:
    avatar_id, request_id = await world.training()
    await world.fal.complete(
        request_id, error="Training failed", error_status=error[0], documented_type=error[1]
    )
    world.clock.advance(timedelta(minutes=16))  # no webhook came: the sweep polls FAL
    assert await world.flow.sweep() == 1
    await _assert_failed_once(world, avatar_id)
    world.clock.advance(timedelta(hours=4))  # past the timeout: nothing applies twice
    assert await world.flow.sweep() == 0
    await _assert_failed_once(world, avatar_id)


async def test_polling_through_an_outage_of_the_result_endpoint_waits_then_delivers(world: World) -> None:
    avatar_id, request_id = await world.training()
    await world.fal.complete(request_id)
    world.clock.advance(timedelta(minutes=16))
    # The status answers COMPLETED; every try of the result meets a 500 from no FAL server.
    result = f"GET /{PORTRAIT}/requests/{request_id}"  # the status path contains it too: call 1
    for n in range(2, 6):
        world.fal.fail_nth(result, Fault.SERVER_ERROR, n)
    assert await world.flow.sweep() == 0
    assert (
        await world.avatar(avatar_id)
    ).status is AvatarStatus.SUBMITTED and await world.balance() == FUNDS - PRICE
    assert await world.flow.sweep() == 1  # FAL is back
    assert (await world.avatar(avatar_id)).status is AvatarStatus.READY
    assert await world.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]


@pytest.mark.parametrize("delivery", ["error webhook", "result left out of the webhook"])
async def test_a_webhook_for_a_training_the_model_failed_releases_it_at_once(
    world: World, delivery: str
) -> None:
    avatar_id, request_id = await world.training()
    await world.fal.complete(
        request_id,
        error="Generation timeout",
        error_status=504,
        documented_type="generation_timeout",
        deliver=False,
    )
    webhook = parse_webhook(world.fal.webhook_body(request_id))
    if delivery != "error webhook":  # FAL says OK but left the payload out: the result endpoint decides
        webhook = RemoteWebhook(request_id=request_id, status="OK", payload=None, payload_error="too large")
    assert await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)
    await _assert_failed_once(world, avatar_id)
    assert not await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)  # FAL's retry
    await _assert_failed_once(world, avatar_id)


async def test_a_webhook_whose_result_fal_cannot_serve_now_leaves_it_to_the_sweep(world: World) -> None:
    avatar_id, request_id = await world.training()
    await world.fal.complete(request_id, deliver=False)
    webhook = RemoteWebhook(request_id=request_id, status="OK", payload=None, payload_error="too large")
    world.fal.outage(times=4, status=502)
    assert not await world.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)
    assert (await world.avatar(avatar_id)).status is AvatarStatus.SUBMITTED
    world.clock.advance(timedelta(minutes=16))
    assert await world.flow.sweep() == 1
    assert (
        await world.avatar(avatar_id)
    ).status is AvatarStatus.READY and await world.balance() == FUNDS - PRICE


# --- our copy of the LoRA --------------------------------------------------------------------


async def _ready(world: World) -> tuple[uuid.UUID, Avatar]:
    avatar_id, request_id = await world.training()
    await world.fal.complete(request_id, deliver=False)
    assert await world.flow.apply_webhook(
        avatar_id=avatar_id, webhook=parse_webhook(world.fal.webhook_body(request_id))
    )
    avatar = await world.avatar(avatar_id)
    assert avatar.status is AvatarStatus.READY and avatar.lora_url and avatar.config_url
    return avatar_id, avatar


def _fal_file(world: World, url: str) -> bytes:
    return world.fal.files[url.rsplit("/", 1)[1]][0]


async def test_a_trained_lora_and_its_config_are_copied_into_our_storage(world: World) -> None:
    avatar_id, avatar = await _ready(world)
    assert world.kept == [avatar_id]  # queued after the commit
    await world.flow.keep_lora(avatar_id=avatar_id)
    kept = (await world.avatar(avatar_id)).training_config
    assert kept[LORA_KEY] == f"{lora_prefix(OWNER, avatar_id)}/lora.safetensors"
    assert await world.storage.get(kept[LORA_KEY]) == _fal_file(world, str(avatar.lora_url))
    assert await world.storage.get(kept[CONFIG_KEY]) == _fal_file(world, str(avatar.config_url))
    assert kept["steps"] == 2500  # what was sent stays
    # FAL's media expiry no longer matters; a repeated job changes nothing.
    world.fal.expire_file(str(avatar.lora_url))
    await world.flow.keep_lora(avatar_id=avatar_id)
    assert (await world.avatar(avatar_id)).training_config == kept


async def test_a_copy_lost_to_a_crash_is_made_by_the_sweep(world: World) -> None:
    avatar_id, avatar = await _ready(world)
    world.kept.clear()  # the process died before its `keep_lora` job ran
    assert await world.flow.sweep() == 0  # the job gets `poll_after` first
    world.clock.advance(timedelta(minutes=16))
    assert await world.flow.sweep() == 1
    assert world.kept == [avatar_id]

    # That job dies after storing the files, before recording them: the next one finishes it.
    async def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")

    prefix = lora_prefix(OWNER, avatar_id)
    original = world.flow._locked
    world.flow._locked = died  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await world.flow.keep_lora(avatar_id=avatar_id)
    world.flow._locked = original  # type: ignore[method-assign]
    assert await world.storage.exists(f"{prefix}/lora.safetensors")
    assert LORA_KEY not in (await world.avatar(avatar_id)).training_config
    world.kept.clear()
    assert await world.flow.sweep() == 1 and world.kept == [avatar_id]
    await world.flow.keep_lora(avatar_id=avatar_id)
    kept = (await world.avatar(avatar_id)).training_config
    assert await world.storage.get(kept[LORA_KEY]) == _fal_file(world, str(avatar.lora_url))
    world.kept.clear()
    assert await world.flow.sweep() == 0 and world.kept == []  # kept: nothing more to do


async def test_a_lora_fal_expired_before_the_copy_is_marked_lost_and_not_retried(world: World) -> None:
    avatar_id, avatar = await _ready(world)
    world.fal.expire_file(str(avatar.lora_url))
    await world.flow.keep_lora(avatar_id=avatar_id)
    assert (await world.avatar(avatar_id)).training_config[LORA_LOST] is True
    world.clock.advance(timedelta(minutes=16))
    world.kept.clear()
    assert await world.flow.sweep() == 0 and world.kept == []


async def test_deleting_the_avatar_deletes_our_copy(world: World) -> None:
    avatar_id, _ = await _ready(world)
    await world.flow.keep_lora(avatar_id=avatar_id)
    prefix = lora_prefix(OWNER, avatar_id)
    assert await world.storage.exists(f"{prefix}/lora.safetensors")
    async with unit_of_work(world.db.sessions) as session:
        await world.service.delete(session=session, user_id=OWNER, avatar_id=avatar_id)
    assert not await world.storage.exists(f"{prefix}/lora.safetensors")
    assert not await world.storage.exists(f"{prefix}/config.json")
