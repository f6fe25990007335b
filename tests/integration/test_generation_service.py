"""GenerationService on real databases against the fake FAL queue: polling mode, outcomes that
race (webhooks and their `finish` jobs, sweeps), the recovery sweep and its timeout, the
in-flight limit, and the free regeneration a defective portrait earns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from aisha.avatars.models import Avatar, AvatarStatus, AvatarType
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.bot.presenters.generation import GenerationPresenter
from aisha.clock import FrozenClock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.enhance import PromptEnhancer
from aisha.generation.errors import FreeRegenerationUnavailable, GenerationNotFound, TooManyInFlight
from aisha.generation.flow import GenerationFlow
from aisha.generation.models import (
    GenerationRequest,
    GenerationRules,
    ImageGeneration,
    QualityVerdict,
    Source,
    storage_prefix,
)
from aisha.generation.service import GenerationService
from aisha.i18n import Translator
from aisha.messaging import Buttons
from aisha.operations import PaidOperations
from aisha.providers.fal import FalClient
from aisha.providers.fal_images import FalImageGenerator, GeneratorConfig
from aisha.providers.fal_webhook import parse_webhook
from aisha.remote import RemoteWebhook
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.faults import Fault
from aisha.storage import LocalStorage
from aisha.users.locks import UserLocks
from aisha.users.service import TelegramProfile, UserService
from tests.conftest import Database

USER = 7001
FUNDS = 100


@dataclass
class RecordingMessenger:
    sent: list[tuple[str, int, Any]] = field(default_factory=list)

    async def send_text(
        self, chat_id: int, text: str, *, buttons: Buttons | None = None, reply_to: int | None = None
    ) -> int:
        self.sent.append(("text", chat_id, (text, buttons)))
        return len(self.sent)

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, buttons: Buttons | None = None
    ) -> None:
        self.sent.append(("edit", chat_id, text))

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        self.sent.append(("remove_buttons", chat_id, message_id))

    async def send_document(
        self, chat_id: int, *, file_name: str, data: bytes, caption: str | None = None
    ) -> None:
        self.sent.append(("document", chat_id, file_name))

    async def send_chat_action(self, chat_id: int, action: str) -> None:
        self.sent.append(("action", chat_id, action))

    async def download(self, file_id: str, destination: Path, *, max_bytes: int | None = None) -> int:
        raise AssertionError("not used here")

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, buttons: Buttons | None = None
    ) -> int:
        self.sent.append(("photo", chat_id, buttons))
        return len(self.sent)

    async def send_album(self, chat_id: int, photos: list[bytes], *, caption: str | None = None) -> list[int]:
        self.sent.append(("album", chat_id, len(photos)))
        return [len(self.sent)] * len(photos)

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.sent if kind != "action"]


class DefectVision:
    async def describe(self, image: bytes) -> str:
        return "me on a rooftop"

    async def check_quality(self, image: bytes) -> QualityVerdict:
        return QualityVerdict(ok=False, defects=("extra_fingers",))


@dataclass
class Harness:
    service: GenerationService
    flow: GenerationFlow
    fal: FakeFalServer
    clock: FrozenClock
    messenger: RecordingMessenger
    db: Database
    ledger: LedgerService
    enqueued: list[uuid.UUID]
    finishes: list[tuple[uuid.UUID, RemoteWebhook]]  # `generation.finish` jobs queued by webhooks
    avatar_id: uuid.UUID

    async def balance(self) -> int:
        async with self.db.sessions() as session:
            return await self.ledger.get_balance(session=session, user_id=USER)

    async def create(self, **kw: Any) -> uuid.UUID:
        request = GenerationRequest(
            **(
                {
                    "source": Source.TEXT,
                    "aspect_ratio": "1:1",
                    "num_images": 2,
                    "prompt": "me in Rome",
                    "avatar_id": self.avatar_id,
                }
                | kw
            )
        )
        async with unit_of_work(self.db.sessions) as session:
            row = await self.service.create(session=session, user_id=USER, request=request)
            return row.id

    async def row(self, generation_id: uuid.UUID) -> ImageGeneration:
        async with self.db.sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            assert row is not None
            return row

    async def entries(self) -> list[EntryKind]:
        async with self.db.sessions() as session:
            rows = await session.scalars(
                select(CreditEntry.kind)
                .where(CreditEntry.user_id == USER)
                .order_by(CreditEntry.created_at, CreditEntry.id)
            )
            return list(rows)


@pytest.fixture
async def make(db: Database, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    fal = FakeFalServer()
    await fal.start()
    http = httpx.AsyncClient()

    async def build(*, webhooks: bool = True, vision: Any = None, **rules: Any) -> Harness:
        clock = FrozenClock()
        ledger = LedgerService(clock=clock, hold_ttl=timedelta(hours=6))
        messenger = RecordingMessenger()
        storage = LocalStorage(tmp_path / "files")
        translator = Translator.load()
        async with unit_of_work(db.sessions) as session:
            await UserService(clock=clock, ledger=ledger, welcome_bonus=0).register_or_touch(
                session,
                profile=TelegramProfile(USER, None, "Ann", None, "en"),
                locale="en",
            )
            await ledger.credit(
                session=session, user_id=USER, amount=FUNDS, key="funds", kind=EntryKind.BONUS
            )
            avatar = Avatar(
                user_id=USER,
                type=AvatarType.PORTRAIT,
                status=AvatarStatus.READY,
                name="Me",
                trigger_phrase="ohwxint0000001",
                is_main=True,
                lora_url=fal.host_file("lora.safetensors", b"weights"),
                training_config={},
            )
            session.add(avatar)
            await session.flush()
            avatar_id = avatar.id
        enqueued: list[uuid.UUID] = []

        finishes: list[tuple[uuid.UUID, RemoteWebhook]] = []

        async def enqueue(generation_id: uuid.UUID) -> None:
            enqueued.append(generation_id)

        async def enqueue_finish(generation_id: uuid.UUID, webhook: RemoteWebhook) -> None:
            finishes.append((generation_id, webhook))

        generator = FalImageGenerator(
            FalClient(
                key=fal.key, queue_url=fal.base_url, rest_url=fal.base_url, http=http, backoff_base=0.01
            ),
            http,
            GeneratorConfig(),
            # Webhook mode against an address nobody listens on: the test delivers by hand.
            public_base_url="http://127.0.0.1:9" if webhooks else None,
        )
        generation_rules = GenerationRules(**({"poll_interval": 0.05} | rules))
        flow = GenerationFlow(
            sessions=db.sessions,
            clock=clock,
            storage=storage,
            ledger=ledger,
            prices=PriceList(),
            generator=generator,
            enhancer=PromptEnhancer(writer=None),
            vision=vision,
            messenger=messenger,
            events=GenerationPresenter(messenger=messenger, translator=translator, storage=storage),
            rules=generation_rules,
            enqueue=enqueue,
            enqueue_finish=enqueue_finish,
        )
        service = GenerationService(
            clock=clock,
            storage=storage,
            ledger=ledger,
            prices=PriceList(),
            operations=PaidOperations(UserLocks()),
            flow=flow,
            rules=generation_rules,
            enqueue=enqueue,
            available=True,
            vision_available=vision is not None,
        )
        return Harness(service, flow, fal, clock, messenger, db, ledger, enqueued, finishes, avatar_id)

    yield build
    await http.aclose()
    await fal.stop()


async def test_polling_mode_generates_and_captures(make: Callable[..., Any]) -> None:
    h: Harness = await make(webhooks=False)
    h.fal.complete_after = 0.2
    generation_id = await h.create()
    async with asyncio.timeout(15):
        await h.flow.run(generation_id=generation_id)
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUCCEEDED and row.cost == 10 and len(row.results) == 2
    assert h.fal.submissions[0].webhook_url is None
    assert await h.balance() == FUNDS - 10
    assert h.messenger.kinds() == ["text", "text", "album", "text"]  # status, status, album, actions


async def test_racing_outcomes_apply_exactly_once(make: Callable[..., Any]) -> None:
    h: Harness = await make()
    generation_id = await h.create()
    await h.flow.run(generation_id=generation_id)
    job = h.fal.submissions[0]
    await h.fal.complete(job.request_id, nsfw=[True, False], deliver=False)
    webhook = parse_webhook(h.fal.webhook_body(job.request_id))
    # A repeated delivery queues a second `finish` job: both race the sweep.
    for _ in range(2):
        assert await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    assert [queued for _, queued in h.finishes] == [webhook, webhook]
    h.clock.advance(timedelta(minutes=5))  # the sweep would poll this one too
    results = await asyncio.gather(
        *(h.flow.finish(generation_id=queued_id, webhook=queued) for queued_id, queued in h.finishes),
        h.flow.sweep(),
    )
    # `is True`: the sweep's count 1 would also equal True in list.count.
    assert sum(r is True for r in results[:2]) + results[2] == 1
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUCCEEDED and row.cost == 5  # one of two was blocked
    assert await h.balance() == FUNDS - 5
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]
    assert h.messenger.kinds().count("photo") == 1


async def test_a_forged_request_id_changes_nothing(make: Callable[..., Any]) -> None:
    h: Harness = await make()
    generation_id = await h.create()
    await h.flow.run(generation_id=generation_id)
    other = await h.create(prompt="me in Oslo")
    await h.flow.run(generation_id=other)
    await h.fal.complete(h.fal.submissions[1].request_id, deliver=False)
    # The other job's genuine result, aimed at this row by the URL: the row holds another id.
    webhook = parse_webhook(h.fal.webhook_body(h.fal.submissions[1].request_id))
    assert not await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    assert (await h.row(generation_id)).status is JobStatus.SUBMITTED
    assert not h.finishes


async def test_the_sweep_settles_a_webhook_whose_finish_job_was_lost(make: Callable[..., Any]) -> None:
    h: Harness = await make()
    generation_id = await h.create()
    await h.flow.run(generation_id=generation_id)
    request_id = h.fal.submissions[0].request_id
    async with unit_of_work(h.db.sessions) as session:  # as if FAL's answer to the submission was lost
        row = await session.get(ImageGeneration, generation_id)
        assert row is not None
        row.provider_request_id = None
    h.clock.advance(timedelta(minutes=5))
    await h.fal.complete(request_id, deliver=False)
    webhook = parse_webhook(h.fal.webhook_body(request_id))
    assert await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    h.finishes.clear()  # the job is lost
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUBMITTED and row.provider_request_id == request_id

    assert await h.flow.sweep() == 0  # the job gets `poll_after` from the webhook first
    h.clock.advance(timedelta(minutes=1))
    assert await h.flow.sweep() == 1
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUCCEEDED and row.cost == 10
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]
    assert h.messenger.kinds().count("album") == 1
    # The lost job turning up late changes nothing.
    assert not await h.flow.finish(generation_id=generation_id, webhook=webhook)
    assert h.messenger.kinds().count("album") == 1


async def test_sweep_reenqueues_a_lost_job_and_releases_past_the_timeout(make: Callable[..., Any]) -> None:
    h: Harness = await make()
    lost = await h.create()
    assert await h.flow.sweep() == 0  # too young to be called lost
    h.clock.advance(timedelta(minutes=2))
    assert await h.flow.sweep() == 1
    assert h.enqueued == [lost]

    stuck = await h.create(prompt="me in Lima")
    await h.flow.run(generation_id=stuck)  # submitted; FAL never answers
    assert await h.balance() == FUNDS - 20
    h.clock.advance(timedelta(minutes=11))
    assert await h.flow.sweep() == 2
    for generation_id in (lost, stuck):
        row = await h.row(generation_id)
        assert row.status is JobStatus.FAILED and row.error == "timeout"
    assert await h.balance() == FUNDS
    assert h.fal.submissions[0].cancel_requested
    assert await h.flow.sweep() == 0  # nothing left, nothing applied twice
    assert (await h.entries()).count(EntryKind.RELEASE) == 2


async def test_in_flight_limit_reserves_nothing_for_the_refused_one(make: Callable[..., Any]) -> None:
    h: Harness = await make(max_in_flight=1)
    await h.create()
    with pytest.raises(TooManyInFlight):
        await h.create()
    assert await h.balance() == FUNDS - 10


async def test_a_defective_portrait_earns_one_free_regeneration(make: Callable[..., Any]) -> None:
    h: Harness = await make(vision=DefectVision())
    generation_id = await h.create(num_images=1)
    await h.flow.run(generation_id=generation_id)
    await h.fal.complete(h.fal.submissions[0].request_id, deliver=False)
    webhook = parse_webhook(h.fal.webhook_body(h.fal.submissions[0].request_id))
    assert await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    assert await h.flow.finish(generation_id=generation_id, webhook=h.finishes.pop()[1])
    row = await h.row(generation_id)
    assert row.results[0]["quality"] == {"ok": False, "defects": ["extra_fingers"]}
    assert row.config["free_regeneration"] == "offered"
    offer = [payload for kind, _, payload in h.messenger.sent if kind == "text"][-1]
    assert offer[1][0][0].callback_data == f"gact:free:{generation_id.hex}:0"

    async with unit_of_work(h.db.sessions) as session:
        free = await h.service.take_free_regeneration(
            session=session, user_id=USER, generation_id=generation_id
        )
        assert free.price == 0 and free.hold_id is None
        assert free.enhanced_prompt == row.enhanced_prompt
    async with unit_of_work(h.db.sessions) as session:
        with pytest.raises(FreeRegenerationUnavailable):
            await h.service.take_free_regeneration(session=session, user_id=USER, generation_id=generation_id)
        with pytest.raises(GenerationNotFound):
            await h.service.take_free_regeneration(
                session=session, user_id=USER + 1, generation_id=generation_id
            )
    assert await h.balance() == FUNDS - 5


async def test_deleting_removes_the_files_only_once_the_deletion_committed(
    make: Callable[..., Any], tmp_path: Path
) -> None:
    h: Harness = await make(webhooks=False)
    h.fal.complete_after = 0.1
    generation_id = await h.create()
    async with asyncio.timeout(15):
        await h.flow.run(generation_id=generation_id)
    folder = tmp_path / "files" / storage_prefix(USER, generation_id)
    assert sorted(p.name for p in folder.iterdir()) == ["1.png", "2.png"]

    class Abort(Exception):
        pass

    # The caller's transaction fails after the delete: the row is back, so the files stay.
    with pytest.raises(Abort):
        async with unit_of_work(h.db.sessions) as session:
            await h.service.delete(session=session, user_id=USER, generation_id=generation_id)
            assert folder.exists()  # nothing deleted while the transaction is open
            raise Abort
    assert (await h.row(generation_id)).status is JobStatus.SUCCEEDED
    assert sorted(p.name for p in folder.iterdir()) == ["1.png", "2.png"]

    async with unit_of_work(h.db.sessions) as session:
        await h.service.delete(session=session, user_id=USER, generation_id=generation_id)
    assert not folder.exists() or list(folder.iterdir()) == []
    async with h.db.sessions() as session:
        assert await session.get(ImageGeneration, generation_id) is None


def _told(h: Harness) -> list[str]:
    return [str(payload) for kind, _, payload in h.messenger.sent if kind in ("text", "edit")]


async def test_polling_a_job_failed_by_the_model_releases_at_once(make: Callable[..., Any]) -> None:
    # FAL's documented error shape (no error_type): the job's outcome, not an outage to retry.
    h: Harness = await make(webhooks=False)
    generation_id = await h.create()

    async def fail_when_submitted() -> None:
        [job] = await h.fal.wait_submissions(1)
        await h.fal.complete(
            job.request_id,
            error="Internal server error",
            error_status=500,
            documented_type="internal_server_error",
        )

    async with asyncio.timeout(15):
        await asyncio.gather(h.flow.run(generation_id=generation_id), fail_when_submitted())
    row = await h.row(generation_id)
    assert row.status is JobStatus.FAILED and row.error == "provider" and row.cost == 0
    assert await h.balance() == FUNDS
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    assert "The image could not be created: the image service failed." in _told(h)[-1]
    assert "10 credits returned to your balance." in _told(h)[-1]


async def test_polling_through_an_outage_of_the_result_endpoint_still_delivers(
    make: Callable[..., Any],
) -> None:
    h: Harness = await make(webhooks=False)
    generation_id = await h.create()

    async def outage_then_done() -> None:
        [job] = await h.fal.wait_submissions(1)
        await h.fal.complete(job.request_id)
        h.fal.fail_nth(f"GET /fal-ai/flux-lora/requests/{job.request_id}", Fault.SERVER_ERROR, n=1)

    async with asyncio.timeout(15):
        await asyncio.gather(h.flow.run(generation_id=generation_id), outage_then_done())
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUCCEEDED and row.cost == 10
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]


@pytest.mark.parametrize("delivery", ["error webhook", "result too large for the webhook"])
async def test_a_webhook_for_a_job_failed_by_the_model_releases_at_once(
    make: Callable[..., Any], delivery: str
) -> None:
    h: Harness = await make()
    generation_id = await h.create()
    await h.flow.run(generation_id=generation_id)
    request_id = h.fal.submissions[0].request_id
    await h.fal.complete(
        request_id,
        error="Generation timeout",
        error_status=504,
        documented_type="generation_timeout",
        deliver=False,
    )
    webhook = parse_webhook(h.fal.webhook_body(request_id))
    if delivery != "error webhook":  # FAL says OK but left the payload out: the result endpoint decides
        webhook = RemoteWebhook(request_id=request_id, status="OK", payload=None, payload_error="too large")
    assert await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    assert await h.flow.finish(generation_id=generation_id, webhook=h.finishes.pop()[1])
    row = await h.row(generation_id)
    assert row.status is JobStatus.FAILED and await h.balance() == FUNDS
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]
    assert "the image service failed." in _told(h)[-1]
    assert not await h.flow.finish(generation_id=generation_id, webhook=webhook)  # once only
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.RELEASE]


async def test_a_webhook_whose_result_fal_cannot_serve_now_waits_for_the_sweep(
    make: Callable[..., Any],
) -> None:
    h: Harness = await make()
    generation_id = await h.create()
    await h.flow.run(generation_id=generation_id)
    request_id = h.fal.submissions[0].request_id
    await h.fal.complete(request_id, deliver=False)
    webhook = RemoteWebhook(request_id=request_id, status="OK", payload=None, payload_error="too large")
    assert await h.service.apply_webhook(generation_id=generation_id, webhook=webhook)
    h.fal.outage(times=4, status=502)  # every try of one result call
    assert not await h.flow.finish(generation_id=generation_id, webhook=h.finishes.pop()[1])
    assert (await h.row(generation_id)).status is JobStatus.SUBMITTED and await h.balance() == FUNDS - 10
    h.clock.advance(timedelta(minutes=2))
    assert await h.flow.sweep() == 1  # FAL is back: the sweep's poll delivers
    row = await h.row(generation_id)
    assert row.status is JobStatus.SUCCEEDED and row.cost == 10
    assert await h.entries() == [EntryKind.BONUS, EntryKind.HOLD, EntryKind.CAPTURE]


async def test_a_lora_that_expires_within_the_check_window_fails_once_then_is_republished(
    make: Callable[..., Any], tmp_path: Path
) -> None:
    h: Harness = await make(webhooks=False)
    h.fal.complete_after = 0.1
    storage = LocalStorage(tmp_path / "files")  # the service's storage
    await storage.put("loras/7001/copy/lora.safetensors", b"weights")
    async with unit_of_work(h.db.sessions) as session:
        avatar = await session.get(Avatar, h.avatar_id)
        assert avatar is not None and avatar.lora_url
        avatar.training_config = {"lora_key": "loras/7001/copy/lora.safetensors"}
        fal_url = avatar.lora_url

    async def generate() -> ImageGeneration:
        generation_id = await h.create(num_images=1)
        async with asyncio.timeout(15):
            await h.flow.run(generation_id=generation_id)
        return await h.row(generation_id)

    assert (await generate()).status is JobStatus.SUCCEEDED  # FAL's CDN answered: remembered a while
    h.fal.expire_file(fal_url)
    # Within the window nobody asks the CDN: FAL can't download the LoRA, the job fails, released.
    failed = await generate()
    assert failed.status is JobStatus.FAILED and failed.cost == 0
    assert h.fal.submissions[1].payload["loras"][0]["path"] == fal_url
    # The failure dropped what was remembered: the next one finds the file gone and republishes ours.
    row = await generate()
    assert row.status is JobStatus.SUCCEEDED and row.cost == 5
    republished = h.fal.submissions[2].payload["loras"][0]["path"]
    assert republished != fal_url and h.fal.files[republished.rsplit("/", 1)[1]][0] == b"weights"
    assert await h.balance() == FUNDS - 10
    hold, capture, release = EntryKind.HOLD, EntryKind.CAPTURE, EntryKind.RELEASE
    assert await h.entries() == [EntryKind.BONUS, hold, capture, hold, release, hold, capture]


async def test_a_gone_lora_without_our_copy_fails_as_fal_fails_it_and_releases(
    make: Callable[..., Any],
) -> None:
    h: Harness = await make(webhooks=False)
    h.fal.complete_after = 0.1
    async with h.db.sessions() as session:
        avatar = await session.get(Avatar, h.avatar_id)
        assert avatar is not None and avatar.lora_url
    h.fal.expire_file(avatar.lora_url)
    generation_id = await h.create(num_images=1)
    async with asyncio.timeout(15):
        await h.flow.run(generation_id=generation_id)
    row = await h.row(generation_id)
    assert row.status is JobStatus.FAILED and await h.balance() == FUNDS
    assert "the image service failed." in _told(h)[-1]
