"""Image generation rules: quote, hold, enhance, generate on FAL, store, deliver, capture, recover.

Money and status move together. A generation is created with its credit hold in one transaction;
every outcome (webhook, poll, timeout) is a conditional UPDATE on the row's status written in the
same transaction as the capture or release, so it applies exactly once however many webhooks,
polls and sweeps race for it. Capture and release use the keys `gen:<id>:capture` and
`gen:<id>:release`, so even a replay of the ledger call changes nothing.

Slow work (vision, the LLM, FAL, downloads) never runs inside a transaction. The row is claimed
(PENDING → SUBMITTED) before the submission, so two runs of the job never submit twice; a
submission whose outcome is unknown keeps its hold and is settled by its webhook or the timeout.

FAL's webhook only checks the row and queues the `generation.finish` job, so FAL never waits on
downloads, Telegram or vision. A lost finish job is caught by the sweep, which polls FAL for rows
at the provider once `poll_after` has passed since the webhook touched them.

"Delivered" means generated, not blocked by the safety checker, downloaded and stored: the
gallery has it even if Telegram fails to show it at that moment.
"""

from __future__ import annotations

import asyncio
import html
import random
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.models import LORA_KEY, Avatar, AvatarStatus, AvatarType
from aisha.billing.errors import HoldAlreadyResolved, HoldNotFound
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import after_commit, unit_of_work
from aisha.generation.enhance import PromptEnhancer, PromptSubject
from aisha.generation.errors import (
    AvatarNotReady,
    EmptyPrompt,
    FreeRegenerationUnavailable,
    GenerationNotFound,
    GenerationUnavailable,
    PromptTooLong,
    TooManyInFlight,
    WrongGenerationStatus,
)
from aisha.generation.models import ImageGeneration
from aisha.generation.vision import Vision
from aisha.i18n import Translator
from aisha.jobs.metrics import JobMetrics
from aisha.messaging import Button, Messenger
from aisha.providers.fal import FalClient, ImagesOutput, parse_images_result, webhook_url
from aisha.remote import (
    RemoteError,
    RemoteFailed,
    RemoteMalformedOutput,
    RemoteNotFound,
    RemoteRefused,
    RemoteState,
    RemoteUnavailable,
    RemoteWebhook,
)
from aisha.storage import ObjectStorage, StorageError
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

# The aspect ratios we offer, as FAL's image_size enum names them.
ASPECT_RATIOS: dict[str, str] = {
    "1:1": "square_hd",
    "3:4": "portrait_4_3",
    "4:3": "landscape_4_3",
    "9:16": "portrait_16_9",
    "16:9": "landscape_16_9",
}
JOB_NAME = "generation.run"
FINISH_JOB = "generation.finish"
DEFAULT_RATIO = "3:4"
MAX_IMAGES = 4
IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
AT_PROVIDER = (JobStatus.SUBMITTED, JobStatus.RUNNING)
CAPTION_PROMPT_CHARS = 300
# Callback data of the buttons jobs attach; the bot's generation router parses the same shapes.
ACTION_PREFIX = "gact"
NEW_CALLBACK = "gen:new"  # "create an image": the avatars feature shows it too


def action_callback(action: str, generation_id: uuid.UUID, n: int = 0) -> str:
    return f"{ACTION_PREFIX}:{action}:{generation_id.hex}:{n}"


def storage_prefix(user_id: int, generation_id: uuid.UUID) -> str:
    return f"generations/{user_id}/{generation_id}"


class Source(StrEnum):
    TEXT = "text"  # the user's words
    PHOTO = "photo"  # a reference photo the user sent: vision writes the prompt
    LIKE = "like"  # one of our generated images: vision writes the prompt
    REGENERATE = "regenerate"  # an earlier generation's prompt again, new seed
    FREE = "free"  # a free regeneration after the quality check found a defect

    @property
    def needs_vision(self) -> bool:
        return self in (Source.PHOTO, Source.LIKE)


# --- the provider ----------------------------------------------------------------------------


class ProviderState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    UNKNOWN = "unknown"


class GenerationFailed(Exception):
    """The provider ran the job and it failed, or its result is gone."""


class ImageGenerator(Protocol):
    def request(
        self, *, prompt: str, lora_url: str | None, image_size: str, num_images: int, seed: int
    ) -> tuple[str, dict[str, Any]]:
        """The endpoint and the input for one job (no I/O)."""
        ...

    async def submit(self, *, endpoint: str, payload: dict[str, Any], webhook_url: str | None) -> str:
        """Queue a job; its request id. Raises RemoteRefused, RemoteUnavailable."""
        ...

    async def state(self, *, endpoint: str, request_id: str) -> ProviderState: ...

    async def result(self, *, endpoint: str, request_id: str) -> ImagesOutput:
        """The images of a completed job; GenerationFailed if it failed or is gone.

        Raises RemoteUnavailable (or another RemoteError) when FAL could not say: ask again later.
        """
        ...

    async def cancel(self, *, endpoint: str, request_id: str) -> None: ...

    async def download(self, url: str) -> bytes: ...

    async def lora_answers(self, url: str) -> bool:
        """False when the provider's CDN says the LoRA file is gone (media expiry)."""
        ...

    async def publish_lora(self, data: bytes) -> str:
        """Put LoRA weights where the provider can fetch them; their new URL. Raises RemoteError."""
        ...


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    lora_endpoint: str = "fal-ai/flux-lora"
    plain_endpoint: str = "fal-ai/flux/dev"
    steps: int = 28
    guidance_scale: float = 3.5
    lora_scale: float = 1.0
    max_download_bytes: int = 30 * 1024 * 1024


class FalImageGenerator:
    """FLUX on FAL's queue: fal-ai/flux-lora with the avatar's LoRA, or plain FLUX without one."""

    def __init__(self, client: FalClient, http: httpx.AsyncClient, config: GeneratorConfig) -> None:
        self._client = client
        self._http = http
        self.config = config

    def request(
        self, *, prompt: str, lora_url: str | None, image_size: str, num_images: int, seed: int
    ) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "prompt": prompt,
            "image_size": image_size,
            "num_inference_steps": self.config.steps,
            "guidance_scale": self.config.guidance_scale,
            "num_images": num_images,
            "seed": seed,
            "enable_safety_checker": True,
            "output_format": "png",
        }
        if lora_url is None:
            return self.config.plain_endpoint, payload
        payload["loras"] = [{"path": lora_url, "scale": self.config.lora_scale}]
        return self.config.lora_endpoint, payload

    async def submit(self, *, endpoint: str, payload: dict[str, Any], webhook_url: str | None) -> str:
        submission = await self._client.submit(endpoint, payload, webhook_url=webhook_url)
        return submission.request_id

    async def state(self, *, endpoint: str, request_id: str) -> ProviderState:
        try:
            status = await self._client.status(endpoint, request_id)
        except RemoteNotFound:
            return ProviderState.UNKNOWN
        if status.state is RemoteState.COMPLETED:
            return ProviderState.DONE
        if status.state is RemoteState.IN_PROGRESS:
            return ProviderState.RUNNING
        return ProviderState.QUEUED

    async def result(self, *, endpoint: str, request_id: str) -> ImagesOutput:
        try:
            return parse_images_result(await self._client.result(endpoint, request_id))
        except (RemoteFailed, RemoteNotFound, RemoteMalformedOutput) as exc:
            raise GenerationFailed(str(exc)) from None

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        await self._client.cancel(endpoint, request_id)

    async def lora_answers(self, url: str) -> bool:
        return await self._client.answers(url)

    async def publish_lora(self, data: bytes) -> str:
        return await self._client.upload(
            data, file_name="lora.safetensors", content_type="application/octet-stream"
        )

    async def download(self, url: str) -> bytes:
        response = await self._http.get(url, timeout=60.0, follow_redirects=True)
        response.raise_for_status()
        if len(response.content) > self.config.max_download_bytes:
            raise GenerationFailed("image is larger than we accept")
        return response.content


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerationRules:
    max_in_flight: int = 2
    timeout: timedelta = timedelta(minutes=10)
    poll_after: timedelta = timedelta(minutes=1)
    poll_interval: float = 2.0
    prompt_max_length: int = 1000
    free_regeneration: bool = True
    quality_check: bool = True
    # Where FAL posts its webhook; None: polling mode (the job polls).
    public_base_url: str | None = None
    # How long a LoRA URL that answered is trusted without asking FAL's CDN again.
    lora_check_ttl: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class AvatarChoice:
    id: uuid.UUID
    name: str
    type: AvatarType


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the user confirmed. `prompt` for TEXT; `source_*` for the other sources."""

    source: Source
    aspect_ratio: str
    num_images: int
    prompt: str = ""
    avatar_id: uuid.UUID | None = None
    source_file_id: str | None = None  # PHOTO: the Telegram file
    source_generation_id: uuid.UUID | None = None  # LIKE / REGENERATE / FREE
    source_index: int = 0  # LIKE: which delivered image


@dataclass(frozen=True, slots=True)
class GalleryCard:
    id: uuid.UUID
    prompt: str
    created_at: datetime
    cost: int
    images: int
    first_key: str
    offset: int
    total: int


@dataclass(slots=True)
class _Delivery:
    results: list[dict[str, Any]] = field(default_factory=list)
    blocked: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Finished:
    user_id: int
    locale: str
    config: dict[str, Any]
    prompt: str
    captured: int
    returned: int


# --- what users are told ---------------------------------------------------------------------


class GenerationNotifier:
    """Messages of the job, in the user's language. A failed message never undoes the outcome."""

    def __init__(self, *, messenger: Messenger, translator: Translator, storage: ObjectStorage) -> None:
        self._messenger = messenger
        self._translator = translator
        self._storage = storage

    async def _safely(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception:
            log.warning("generation.notify_failed", what=what, exc_info=True)
            return None

    async def action(self, user_id: int) -> None:
        await self._safely("action", self._messenger.send_chat_action(user_id, "upload_photo"))

    async def status(self, user_id: int, config: dict[str, Any], text: str) -> None:
        """Edit the one status message (the confirmed options); send one if there is none."""
        message_id = config.get("status_message_id")
        if isinstance(message_id, int):
            await self._safely("status", self._messenger.edit_text(user_id, message_id, text))
        else:
            await self._safely("status", self._messenger.send_text(user_id, text))

    async def working(self, *, user_id: int, locale: str, config: dict[str, Any], step: str) -> None:
        t = self._translator.bind(locale)
        n = int(config.get("num_images", 1))
        await self.status(user_id, config, t(f"generation.status.{step}", count=n))

    async def delivered(
        self,
        *,
        generation_id: uuid.UUID,
        finished: _Finished,
        results: list[dict[str, Any]],
        blocked: int,
        failed: int,
    ) -> None:
        t = self._translator.bind(finished.locale)
        user_id = finished.user_id
        lines = [t("generation.done", delivered=len(results), cost=finished.captured, count=len(results))]
        if blocked:
            lines.append(t("generation.blocked", blocked=blocked, count=blocked))
        if failed:
            lines.append(t("generation.lost", failed=failed, count=failed))
        if finished.returned:
            lines.append(t("generation.returned", returned=finished.returned, count=finished.returned))
        await self.status(user_id, finished.config, "\n".join(lines))
        await self.action(user_id)
        photos: list[bytes] = []
        for item in results:
            try:
                photos.append(await self._storage.get(str(item["key"])))
            except StorageError:
                log.error("generation.stored_image_missing", generation_id=str(generation_id))
        if not photos:
            return
        caption = t("generation.caption", prompt=_excerpt(finished.prompt))
        buttons = result_buttons(t, generation_id, len(photos))
        if len(photos) == 1:
            await self._safely(
                "photo", self._messenger.send_photo(user_id, photos[0], caption=caption, buttons=buttons)
            )
            return
        await self._safely("album", self._messenger.send_album(user_id, photos, caption=caption))
        await self._safely(
            "actions", self._messenger.send_text(user_id, t("generation.actions"), buttons=buttons)
        )

    async def failed(self, *, finished: _Finished, reason: str) -> None:
        t = self._translator.bind(finished.locale)
        text = t("generation.failed", reason=t(f"generation.failure.{reason}"))
        if finished.returned:
            text += "\n" + t("generation.returned", returned=finished.returned, count=finished.returned)
        await self.status(finished.user_id, finished.config, text)

    async def defect(self, *, user_id: int, locale: str, generation_id: uuid.UUID, free: bool) -> None:
        t = self._translator.bind(locale)
        buttons = None
        if free:
            buttons = [[Button(t("generation.button.free"), action_callback("free", generation_id))]]
        key = "generation.defect.free" if free else "generation.defect"
        await self._safely("defect", self._messenger.send_text(user_id, t(key), buttons=buttons))


def result_buttons(t: Any, generation_id: uuid.UUID, images: int) -> list[list[Button]]:
    """Regenerate, more like this (one per image of an album), show the prompt, delete."""
    rows = [[Button(t("generation.button.regenerate"), action_callback("regen", generation_id))]]
    if images == 1:
        rows[0].append(Button(t("generation.button.like"), action_callback("like", generation_id, 0)))
    else:
        rows.append(
            [
                Button(t("generation.button.like_n", n=i + 1), action_callback("like", generation_id, i))
                for i in range(images)
            ]
        )
    rows.append(
        [
            Button(t("generation.button.prompt"), action_callback("prompt", generation_id)),
            Button(t("generation.button.delete"), action_callback("del", generation_id)),
        ]
    )
    return rows


def _excerpt(text: str, limit: int = CAPTION_PROMPT_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return html.escape(text, quote=False)


# --- the service -----------------------------------------------------------------------------


class GenerationService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        ledger: LedgerService,
        prices: PriceList,
        generator: ImageGenerator | None,
        enhancer: PromptEnhancer,
        vision: Vision | None,
        messenger: Messenger,
        notifier: GenerationNotifier,
        rules: GenerationRules,
        enqueue: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_finish: Callable[[uuid.UUID, RemoteWebhook], Awaitable[None]],
        metrics: JobMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._metrics = metrics or JobMetrics()
        self._generator = generator
        self._enhancer = enhancer
        self._vision = vision
        self._messenger = messenger
        self._notifier = notifier
        self.rules = rules
        self._enqueue = enqueue
        self._enqueue_finish = enqueue_finish
        # avatar id -> (the LoRA URL that answered, when): one HEAD per avatar per `lora_check_ttl`.
        self._lora_checked: dict[uuid.UUID, tuple[str, datetime]] = {}

    # --- quoting and checks --------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._generator is not None

    @property
    def vision_available(self) -> bool:
        return self._vision is not None

    def unit_price(self, *, with_avatar: bool) -> int:
        return self._prices.image_price(1, with_avatar=with_avatar)

    def quote(self, *, num_images: int, with_avatar: bool, source: Source) -> int:
        if source is Source.FREE:
            return 0
        price = self._prices.image_price(num_images, with_avatar=with_avatar)
        return price + (self._prices.photo_to_prompt if source.needs_vision else 0)

    def check_prompt(self, prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise EmptyPrompt()
        if len(prompt) > self.rules.prompt_max_length:
            raise PromptTooLong(length=len(prompt), limit=self.rules.prompt_max_length)
        return prompt

    async def main_avatar(self, *, session: AsyncSession, user_id: int) -> AvatarChoice | None:
        """The user's main READY avatar; else their newest READY one; None without one."""
        avatar = await session.scalar(
            select(Avatar)
            .where(Avatar.user_id == user_id, Avatar.status == AvatarStatus.READY)
            .order_by(Avatar.is_main.desc(), Avatar.finished_at.desc(), Avatar.created_at.desc())
            .limit(1)
        )
        return AvatarChoice(avatar.id, avatar.name, avatar.type) if avatar else None

    async def ready_avatars(self, *, session: AsyncSession, user_id: int) -> list[AvatarChoice]:
        """The user's READY avatars, the main one first, then the newest: what a card offers."""
        avatars = await session.scalars(
            select(Avatar)
            .where(Avatar.user_id == user_id, Avatar.status == AvatarStatus.READY)
            .order_by(Avatar.is_main.desc(), Avatar.finished_at.desc(), Avatar.created_at.desc())
        )
        return [AvatarChoice(a.id, a.name, a.type) for a in avatars]

    async def avatar_choice(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> AvatarChoice | None:
        avatar = await session.scalar(
            select(Avatar).where(
                Avatar.id == avatar_id, Avatar.user_id == user_id, Avatar.status == AvatarStatus.READY
            )
        )
        return AvatarChoice(avatar.id, avatar.name, avatar.type) if avatar else None

    # --- creating ------------------------------------------------------------------------------

    async def create(
        self, *, session: AsyncSession, user_id: int, request: GenerationRequest
    ) -> ImageGeneration:
        """Hold the credits and write the PENDING row, in the caller's transaction.

        Raises InsufficientCredits (nothing reserved), TooManyInFlight, AvatarNotReady,
        GenerationNotFound (a source that is not the user's), GenerationUnavailable, prompt errors.
        The caller enqueues `run` after its commit.
        """
        if self._generator is None:
            raise GenerationUnavailable("FAL_KEY is not set")
        if request.source.needs_vision and self._vision is None:
            raise GenerationUnavailable("no vision model: OPENAI_API_KEY is not set")
        if request.aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"unknown aspect ratio {request.aspect_ratio!r}")
        if not 1 <= request.num_images <= MAX_IMAGES:
            raise ValueError(f"num_images must be 1..{MAX_IMAGES}")

        prompt, enhanced, avatar_id = "", None, request.avatar_id
        config: dict[str, Any] = {"source": request.source.value}
        source = None
        if request.source_generation_id is not None:
            source = await self._owned(session, request.source_generation_id, user_id)
            config["source_generation_id"] = str(source.id)
        if request.source is Source.TEXT:
            prompt = self.check_prompt(request.prompt)
        elif request.source is Source.PHOTO:
            if not request.source_file_id:
                raise ValueError("a photo source needs its file id")
            config["source_file_id"] = request.source_file_id
        elif request.source is Source.LIKE:
            if source is None or not 0 <= request.source_index < len(source.results):
                raise GenerationNotFound(str(request.source_generation_id))
            config["source_index"] = request.source_index
        else:  # REGENERATE, FREE: the same prompt and avatar, a new seed
            if source is None or source.status is not JobStatus.SUCCEEDED:
                raise GenerationNotFound(str(request.source_generation_id))
            prompt, enhanced, avatar_id = source.prompt, source.enhanced_prompt, source.avatar_id

        avatar_type: AvatarType | None = None
        if avatar_id is not None:
            choice = await self.avatar_choice(session=session, user_id=user_id, avatar_id=avatar_id)
            if choice is None:
                raise AvatarNotReady(str(avatar_id))
            avatar_type = choice.type
        with_avatar = avatar_id is not None
        price = self.quote(num_images=request.num_images, with_avatar=with_avatar, source=request.source)
        config |= {
            "aspect_ratio": request.aspect_ratio,
            "image_size": ASPECT_RATIOS[request.aspect_ratio],
            "num_images": request.num_images,
            "seed": random.randrange(2**31),
            "unit_price": 0 if request.source is Source.FREE else self.unit_price(with_avatar=with_avatar),
            "vision_price": self._prices.photo_to_prompt if request.source.needs_vision else 0,
            "avatar_type": avatar_type.value if avatar_type else None,
        }
        generation_id = uuid.uuid4()
        now = self._clock.now()
        # A savepoint: a refused hold or the in-flight limit leaves nothing behind.
        async with session.begin_nested():
            hold_id = None
            if price > 0:
                hold = await self._ledger.hold(
                    session=session,
                    user_id=user_id,
                    amount=price,
                    key=f"gen:{generation_id}:hold",
                    reference=f"gen:{generation_id}",
                    description="generation.ledger.hold",
                    description_args={"count": request.num_images},
                )
                hold_id = hold.hold_id
            # Counted after the hold locked the user's account row: two confirms can't both pass.
            in_flight = await session.scalar(
                select(func.count())
                .select_from(ImageGeneration)
                .where(ImageGeneration.user_id == user_id, ImageGeneration.status.in_(IN_FLIGHT))
            )
            if int(in_flight or 0) >= self.rules.max_in_flight:
                raise TooManyInFlight(self.rules.max_in_flight, running=int(in_flight or 0))
            generation = ImageGeneration(
                id=generation_id,
                user_id=user_id,
                avatar_id=avatar_id,
                status=JobStatus.PENDING,
                prompt=prompt,
                enhanced_prompt=enhanced,
                config=config,
                results=[],
                hold_id=hold_id,
                price=price,
                cost=0,
                provider_cost_micro_usd=0,
                created_at=now,
                updated_at=now,
            )
            session.add(generation)
            await session.flush()
        log.info(
            "generation.created", generation_id=str(generation_id), source=request.source.value, price=price
        )
        return generation

    async def set_status_message(
        self, *, session: AsyncSession, generation: ImageGeneration, message_id: int
    ) -> None:
        generation.config = {**generation.config, "status_message_id": message_id}
        await session.flush()

    # --- the job -------------------------------------------------------------------------------

    async def run(self, *, generation_id: uuid.UUID) -> None:
        """The `generation.run` job: prompt (vision), enhancement, submission; polls without webhooks."""
        async with self._sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            if row is None or row.status is not JobStatus.PENDING:
                return  # done by an earlier run, or gone
            user_id, config = row.user_id, dict(row.config)
            prompt, enhanced = row.prompt, row.enhanced_prompt
            subject, lora_url, lora_key, avatar_id = None, None, None, row.avatar_id
            if row.avatar_id is not None:
                avatar = await session.get(Avatar, row.avatar_id)
                if avatar is None or avatar.status is not AvatarStatus.READY or not avatar.lora_url:
                    subject = None
                else:
                    subject = PromptSubject(avatar.trigger_phrase, avatar.type)
                    lora_url = avatar.lora_url
                    lora_key = avatar.training_config.get(LORA_KEY)
            avatar_missing = row.avatar_id is not None and subject is None
            locale = await user_locale(session, user_id)
        generator = self._generator
        if generator is None or avatar_missing:
            await self._finish(
                generation_id, request_id=None, output=None, reason="unavailable", pending=True
            )
            return
        await self._notifier.action(user_id)

        if enhanced is None:
            if Source(config.get("source", "text")).needs_vision and not prompt:
                await self._notifier.working(user_id=user_id, locale=locale, config=config, step="looking")
                described = await self._describe(user_id, config)
                if described is None:
                    await self._finish(
                        generation_id, request_id=None, output=None, reason="vision", pending=True
                    )
                    return
                prompt = described
            described_by_vision = Source(config.get("source", "text")).needs_vision
            result = await self._enhancer.enhance(prompt, subject=subject, llm=not described_by_vision)
            enhanced = result.text
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(ImageGeneration)
                    .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.PENDING)
                    .values(
                        prompt=prompt,
                        enhanced_prompt=enhanced,
                        config={**config, "llm_enhanced": result.llm_used},
                        updated_at=self._clock.now(),
                    )
                    .execution_options(synchronize_session=False)
                )
            config["llm_enhanced"] = result.llm_used

        if lora_url is not None and avatar_id is not None:
            try:
                lora_url = await self._live_lora(generator, avatar_id, lora_url, lora_key)
            except (RemoteError, StorageError) as exc:
                log.error("generation.lora_unavailable", generation_id=str(generation_id), error=str(exc))
                await self._finish(
                    generation_id, request_id=None, output=None, reason="provider", pending=True
                )
                return

        endpoint, payload = generator.request(
            prompt=enhanced,
            lora_url=lora_url,
            image_size=str(config["image_size"]),
            num_images=int(config["num_images"]),
            seed=int(config["seed"]),
        )
        asked = {k: v for k, v in payload.items() if k not in ("prompt", "loras")}
        if lora_url is not None:
            asked["lora_scale"] = payload["loras"][0]["scale"]
        # Claim the row before submitting: a second run of this job finds it SUBMITTED and stops.
        async with unit_of_work(self._sessions) as session:
            claimed = (
                await session.execute(
                    update(ImageGeneration)
                    .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.PENDING)
                    .values(
                        status=JobStatus.SUBMITTED,
                        provider_endpoint=endpoint,
                        config={**config, **asked},
                        updated_at=self._clock.now(),
                    )
                    .returning(ImageGeneration.id)
                    .execution_options(synchronize_session=False)
                )
            ).first()
        if claimed is None:
            return
        webhook = None
        if self.rules.public_base_url:
            webhook = webhook_url(self.rules.public_base_url, kind="generation", row_id=generation_id)
        await self._notifier.working(user_id=user_id, locale=locale, config=config, step="drawing")
        try:
            request_id: str | None = await generator.submit(
                endpoint=endpoint, payload=payload, webhook_url=webhook
            )
        except RemoteUnavailable as exc:
            if not exc.maybe_submitted:
                await self._finish(generation_id, request_id=None, output=None, reason="provider")
                return
            # FAL may have queued it: keep the hold; its webhook or the timeout settles it.
            log.warning("generation.submit_outcome_unknown", generation_id=str(generation_id), error=str(exc))
            request_id = None
        except (RemoteRefused, RemoteError) as exc:
            log.warning("generation.submit_refused", generation_id=str(generation_id), error=str(exc))
            await self._finish(generation_id, request_id=None, output=None, reason="provider")
            return
        if request_id is not None:
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(ImageGeneration)
                    .where(
                        ImageGeneration.id == generation_id,
                        ImageGeneration.provider_request_id.is_(None),
                        ImageGeneration.status.in_(AT_PROVIDER),
                    )
                    .values(provider_request_id=request_id, updated_at=self._clock.now())
                    .execution_options(synchronize_session=False)
                )
            log.info("generation.submitted", generation_id=str(generation_id), request_id=request_id)
        if webhook is None and request_id is not None:
            await self._poll_until_done(generation_id, user_id, endpoint, request_id)

    async def _live_lora(
        self, generator: ImageGenerator, avatar_id: uuid.UUID, lora_url: str, lora_key: str | None
    ) -> str:
        """A URL of the avatar's LoRA that FAL can download: FAL's CDN file while it answers, else
        our copy (made when training ended) re-published on FAL's storage and kept on the avatar.

        A HEAD before the submission rather than reacting to FAL's failed result: reacting would
        mean a queue round trip for nothing, then a second submission for the same row (a second
        request id, a webhook for the first to ignore) and the user waiting twice. The answer is
        cached per avatar for `lora_check_ttl`, so a burst of generations costs one HEAD; a LoRA
        that expires within that window fails its job, which releases the hold and drops the
        cache, so the next generation republishes.
        """
        now = self._clock.now()
        checked = self._lora_checked.get(avatar_id)
        if checked is not None and checked[0] == lora_url and now - checked[1] < self.rules.lora_check_ttl:
            return lora_url
        if not await generator.lora_answers(lora_url):
            if lora_key is None:
                # No copy of ours (trained before copies were kept, or FAL's file was gone first).
                log.error("generation.lora_gone_without_copy", avatar_id=str(avatar_id))
                return lora_url
            lora_url = await generator.publish_lora(await self._storage.get(lora_key))
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(Avatar)
                    .where(Avatar.id == avatar_id)
                    .values(lora_url=lora_url, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            log.info("generation.lora_republished", avatar_id=str(avatar_id))
        self._lora_checked[avatar_id] = (lora_url, now)
        return lora_url

    async def _describe(self, user_id: int, config: dict[str, Any]) -> str | None:
        vision = self._vision
        if vision is None:
            return None
        try:
            image = await self._reference_image(user_id, config)
            return await vision.describe(image)
        except Exception as exc:
            log.warning("generation.vision_failed", error=type(exc).__name__)
            return None

    async def _reference_image(self, user_id: int, config: dict[str, Any]) -> bytes:
        if config.get("source") == Source.LIKE.value:
            source_id = uuid.UUID(str(config["source_generation_id"]))
            async with self._sessions() as session:
                source = await self._owned(session, source_id, user_id)
                key = str(source.results[int(config.get("source_index", 0))]["key"])
            return await self._storage.get(key)
        with tempfile.TemporaryDirectory(prefix="aisha-like-") as folder:
            path = Path(folder) / "photo"
            await self._messenger.download(str(config["source_file_id"]), path)
            return await asyncio.to_thread(path.read_bytes)

    async def _poll_until_done(
        self, generation_id: uuid.UUID, user_id: int, endpoint: str, request_id: str
    ) -> None:
        """Polling mode: ask FAL until the job ends; past the timeout the sweep takes over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rules.timeout.total_seconds()
        last_action = loop.time()
        while loop.time() < deadline:
            await asyncio.sleep(self.rules.poll_interval)
            if await self._poll(generation_id, endpoint, request_id, timed_out=False):
                return
            if not await self._in_flight(generation_id):
                return  # settled elsewhere (a sweep, another process)
            if loop.time() - last_action > 4:  # Telegram shows a chat action for about 5 seconds
                await self._notifier.action(user_id)
                last_action = loop.time()

    async def _in_flight(self, generation_id: uuid.UUID) -> bool:
        async with self._sessions() as session:
            status = await session.scalar(
                select(ImageGeneration.status).where(ImageGeneration.id == generation_id)
            )
        return status in IN_FLIGHT

    # --- outcomes ------------------------------------------------------------------------------

    async def apply_webhook(self, *, generation_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified FAL webhook for this generation: queue `finish`. True if it was queued."""
        async with unit_of_work(self._sessions) as session:
            row = await session.get(ImageGeneration, generation_id, with_for_update=True)
            if row is None or row.status not in AT_PROVIDER:
                return False  # a delivery repeated after the job settled it, or deleted meanwhile
            # Only the signed request id counts; the URL's id only says where to look.
            if row.provider_request_id not in (None, webhook.request_id):
                log.warning("generation.webhook_request_mismatch", generation_id=str(generation_id))
                return False
            # A submission whose answer was lost learns its request id here, so the sweep can poll
            # FAL if the job is lost; the fresh `updated_at` gives the job `poll_after` first.
            row.provider_request_id = webhook.request_id
            row.updated_at = self._clock.now()
            after_commit(session, lambda: self._enqueue_finish(generation_id, webhook))
        return True

    async def finish(self, *, generation_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """The `generation.finish` job: apply the webhook's outcome. True if this call settled it."""
        async with self._sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            if row is None or row.status not in AT_PROVIDER:
                return False  # settled by an earlier run, a repeated webhook or the sweep
            endpoint = row.provider_endpoint or ""
        output: ImagesOutput | None = None
        if webhook.ok:
            try:
                if webhook.payload is None:
                    raise RemoteMalformedOutput(webhook.payload_error or "no payload")
                output = parse_images_result(webhook.payload)
            except RemoteMalformedOutput:
                try:
                    output = await self._fetch_result(endpoint, webhook.request_id)
                except RemoteError as exc:
                    # FAL can't say now: the sweep polls this row once `poll_after` has passed.
                    log.warning(
                        "generation.result_unavailable", generation_id=str(generation_id), error=str(exc)
                    )
                    return False
        else:
            log.info("generation.provider_error", generation_id=str(generation_id), error=webhook.error)
        return await self._finish(
            generation_id, request_id=webhook.request_id, output=output, reason="provider"
        )

    async def _fetch_result(self, endpoint: str, request_id: str) -> ImagesOutput | None:
        """The job's images; None when the job failed (the model's error, or no result).

        An outage (RemoteUnavailable, or any RemoteError that isn't the job's own answer) propagates:
        the job may well have succeeded, so the caller asks again later.
        """
        if self._generator is None or not endpoint:
            return None
        try:
            return await self._generator.result(endpoint=endpoint, request_id=request_id)
        except GenerationFailed as exc:
            log.warning("generation.result_failed", request_id=request_id, error=str(exc))
            return None

    async def _poll(
        self, generation_id: uuid.UUID, endpoint: str, request_id: str, *, timed_out: bool
    ) -> bool:
        """Ask FAL about one job. True when the generation was settled by this call."""
        generator = self._generator
        if generator is None:
            return False
        try:
            state = await generator.state(endpoint=endpoint, request_id=request_id)
            output = await self._fetch_result(endpoint, request_id) if state is ProviderState.DONE else None
        except RemoteError as exc:
            log.warning("generation.poll_failed", generation_id=str(generation_id), error=str(exc))
            return False
        if state is ProviderState.DONE:
            return await self._finish(generation_id, request_id=request_id, output=output, reason="provider")
        if state is ProviderState.UNKNOWN:
            return await self._finish(generation_id, request_id=request_id, output=None, reason="provider")
        if state is ProviderState.RUNNING:
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(ImageGeneration)
                    .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.SUBMITTED)
                    .values(status=JobStatus.RUNNING, updated_at=self._clock.now())
                    .execution_options(synchronize_session=False)
                )
        return False

    async def _store(
        self, generation_id: uuid.UUID, user_id: int, output: ImagesOutput, wanted: int
    ) -> _Delivery:
        """Download and store every image the safety checker let through."""
        delivery = _Delivery()
        generator = self._generator
        assert generator is not None
        images = output.images[:wanted]
        delivery.failed = max(wanted - len(images), 0)
        for index, image in enumerate(images):
            if image.nsfw:
                delivery.blocked += 1
                continue
            try:
                data = await generator.download(image.url)
                key = f"{storage_prefix(user_id, generation_id)}/{index + 1}.png"
                await self._storage.put(key, data, content_type=image.content_type or "image/png")
            except (httpx.HTTPError, GenerationFailed, StorageError) as exc:
                log.warning(
                    "generation.image_lost", generation_id=str(generation_id), index=index, error=str(exc)
                )
                delivery.failed += 1
                continue
            delivery.results.append(
                {
                    "key": key,
                    "index": index,
                    "seed": output.seed,
                    "width": image.width,
                    "height": image.height,
                }
            )
        return delivery

    async def _finish(
        self,
        generation_id: uuid.UUID,
        *,
        request_id: str | None,
        output: ImagesOutput | None,
        reason: str,
        pending: bool = False,
    ) -> bool:
        """The one place an outcome applies: status, results, capture or release, exactly once.

        `pending`: the job never reached the provider (vision failed, no FAL): PENDING → FAILED.
        """
        async with self._sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            if row is None or row.status not in ((JobStatus.PENDING,) if pending else AT_PROVIDER):
                return False
            user_id, config, requested_at = row.user_id, dict(row.config), row.created_at
            avatar_id = row.avatar_id
        wanted = int(config.get("num_images", 1))
        delivery = _Delivery(failed=wanted)
        if output is not None:
            delivery = await self._store(generation_id, user_id, output, wanted)
        delivered = len(delivery.results)
        unit, vision_price = int(config.get("unit_price", 0)), int(config.get("vision_price", 0))
        cost = unit * delivered + vision_price if delivered else 0
        now = self._clock.now()
        conditions: list[Any] = [ImageGeneration.id == generation_id]
        values: dict[str, Any] = {"finished_at": now, "updated_at": now}
        if pending:
            conditions.append(ImageGeneration.status == JobStatus.PENDING)
        else:
            conditions.append(ImageGeneration.status.in_(AT_PROVIDER))
            if request_id is not None:
                # A submission whose answer was lost learns its request id from the signed webhook.
                conditions.append(
                    or_(
                        ImageGeneration.provider_request_id == request_id,
                        ImageGeneration.provider_request_id.is_(None),
                    )
                )
                values["provider_request_id"] = request_id
        if delivered:
            with_avatar = config.get("avatar_type") is not None
            values |= {
                "status": JobStatus.SUCCEEDED,
                "results": delivery.results,
                "cost": cost,
                "provider_cost_micro_usd": self._prices.image_cost_micro_usd(wanted, with_avatar)
                + (self._prices.costs.photo_to_prompt if vision_price else 0),
            }
        else:
            if output is not None and delivery.blocked == wanted:
                reason = "blocked"
            values |= {"status": JobStatus.FAILED, "error": reason, "cost": 0}
        captured = returned = 0
        async with unit_of_work(self._sessions) as session:
            outcome = (
                await session.execute(
                    update(ImageGeneration)
                    .where(*conditions)
                    .values(**values)
                    .returning(ImageGeneration.user_id, ImageGeneration.hold_id, ImageGeneration.prompt)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if outcome is None:
                return False  # another webhook, poll or sweep got here first
            if outcome.hold_id is not None:
                try:
                    if cost > 0:
                        resolution = await self._ledger.capture(
                            session=session,
                            hold_id=outcome.hold_id,
                            amount=cost,
                            key=f"gen:{generation_id}:capture",
                            description="generation.ledger.capture",
                            description_args={"count": delivered},
                        )
                    else:
                        resolution = await self._ledger.release(
                            session=session,
                            hold_id=outcome.hold_id,
                            key=f"gen:{generation_id}:release",
                            description="generation.ledger.release",
                        )
                    captured, returned = resolution.captured, resolution.returned
                except (HoldAlreadyResolved, HoldNotFound) as exc:
                    log.error("generation.hold_not_active", generation_id=str(generation_id), error=str(exc))
            locale = await user_locale(session, user_id)
        finished = _Finished(user_id, locale, config, outcome.prompt, captured, returned)
        log.info(
            "generation.finished",
            generation_id=str(generation_id),
            delivered=delivered,
            blocked=delivery.blocked,
            failed=delivery.failed,
            captured=captured,
        )
        if not delivered:
            if avatar_id is not None:
                self._lora_checked.pop(avatar_id, None)  # its LoRA may be why: ask the CDN next time
            await self._notifier.failed(finished=finished, reason=str(values["error"]))
            await self._metrics.job_failed(JOB_NAME, str(values["error"]))
            return True
        await self._notifier.delivered(
            generation_id=generation_id,
            finished=finished,
            results=delivery.results,
            blocked=delivery.blocked,
            failed=delivery.failed,
        )
        # The latency the user felt: from their confirmation to the images in the chat.
        await self._metrics.generation_delivered((self._clock.now() - requested_at).total_seconds())
        await self._check_quality(generation_id, finished, delivery.results)
        return True

    async def _check_quality(
        self, generation_id: uuid.UUID, finished: _Finished, results: list[dict[str, Any]]
    ) -> None:
        """Portraits only: the vision model looks for broken eyes, hands and faces."""
        vision = self._vision
        config = finished.config
        if vision is None or not self.rules.quality_check or config.get("avatar_type") != AvatarType.PORTRAIT:
            return

        async def check(item: dict[str, Any]) -> dict[str, Any] | None:
            try:
                verdict = await vision.check_quality(await self._storage.get(str(item["key"])))
            except Exception as exc:
                log.warning("generation.quality_check_failed", error=type(exc).__name__)
                return None
            return verdict.as_dict()

        verdicts = await asyncio.gather(*(check(item) for item in results))
        checked = [
            item | {"quality": v} if v is not None else item
            for item, v in zip(results, verdicts, strict=True)
        ]
        defect = any(v is not None and not v["ok"] for v in verdicts)
        offer = defect and self.rules.free_regeneration and config.get("source") != Source.FREE.value
        async with unit_of_work(self._sessions) as session:
            values: dict[str, Any] = {"results": checked, "updated_at": self._clock.now()}
            if offer:
                values["config"] = {**config, "free_regeneration": "offered"}
            await session.execute(
                update(ImageGeneration)
                .where(ImageGeneration.id == generation_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if defect:
            await self._notifier.defect(
                user_id=finished.user_id, locale=finished.locale, generation_id=generation_id, free=offer
            )

    # --- recovery ------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Re-drive generations stuck in flight; release those past the timeout. Idempotent.

        Rows at the provider are polled: that also settles one whose webhook came but whose
        `finish` job was lost.
        """
        now = self._clock.now()
        handled = 0
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(
                        ImageGeneration.id,
                        ImageGeneration.status,
                        ImageGeneration.provider_endpoint,
                        ImageGeneration.provider_request_id,
                        ImageGeneration.created_at,
                    ).where(
                        ImageGeneration.status.in_(IN_FLIGHT),
                        ImageGeneration.updated_at <= now - self.rules.poll_after,
                    )
                )
            ).all()
        for row in rows:
            timed_out = row.created_at <= now - self.rules.timeout
            if row.status is JobStatus.PENDING:
                if timed_out:
                    if await self._finish(
                        row.id, request_id=None, output=None, reason="timeout", pending=True
                    ):
                        handled += 1
                else:
                    await self._enqueue(row.id)  # the job was lost: the row says what to do
                    handled += 1
                continue
            if (
                row.provider_endpoint
                and row.provider_request_id
                and await self._poll(
                    row.id, row.provider_endpoint, row.provider_request_id, timed_out=timed_out
                )
            ):
                handled += 1
                continue
            if timed_out:
                if self._generator is not None and row.provider_endpoint and row.provider_request_id:
                    try:
                        await self._generator.cancel(
                            endpoint=row.provider_endpoint, request_id=row.provider_request_id
                        )
                    except RemoteError as exc:
                        log.warning("generation.cancel_failed", generation_id=str(row.id), error=str(exc))
                if await self._finish(row.id, request_id=None, output=None, reason="timeout"):
                    handled += 1
        return handled

    # --- gallery and actions -------------------------------------------------------------------

    async def get(self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID) -> ImageGeneration:
        return await self._owned(session, generation_id, user_id)

    async def gallery(self, *, session: AsyncSession, user_id: int, offset: int) -> GalleryCard | None:
        """One delivered generation, newest first; None past the end."""
        where = (ImageGeneration.user_id == user_id, ImageGeneration.status == JobStatus.SUCCEEDED)
        total = int(
            await session.scalar(select(func.count()).select_from(ImageGeneration).where(*where)) or 0
        )
        if total == 0:
            return None
        offset = min(max(offset, 0), total - 1)
        row = await session.scalar(
            select(ImageGeneration)
            .where(*where)
            .order_by(ImageGeneration.created_at.desc(), ImageGeneration.id.desc())
            .offset(offset)
            .limit(1)
        )
        if row is None or not row.results:
            return None
        return GalleryCard(
            id=row.id,
            prompt=row.prompt,
            created_at=row.created_at,
            cost=row.cost,
            images=len(row.results),
            first_key=str(row.results[0]["key"]),
            offset=offset,
            total=total,
        )

    async def images(
        self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID
    ) -> list[tuple[str, bytes]]:
        """The stored images of the user's generation, as (file name, bytes)."""
        row = await self._owned(session, generation_id, user_id)
        files = []
        for n, item in enumerate(row.results, start=1):
            try:
                files.append((f"aisha-{row.id.hex[:8]}-{n}.png", await self._storage.get(str(item["key"]))))
            except StorageError:
                continue
        return files

    async def read(self, key: str) -> bytes:
        return await self._storage.get(key)

    async def delete(self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID) -> None:
        """The row and its files; one still in flight must settle its hold first."""
        row = await self._owned(session, generation_id, user_id, lock=True)
        if row.status in IN_FLIGHT:
            raise WrongGenerationStatus(row.status.value)
        await session.delete(row)
        await session.flush()
        # Storage is not called inside the caller's transaction: the files go after its commit.
        after_commit(session, lambda: self._storage.delete_prefix(storage_prefix(user_id, generation_id)))

    async def take_free_regeneration(
        self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID
    ) -> ImageGeneration:
        """The one free regeneration a defect earned; FreeRegenerationUnavailable otherwise."""
        # A savepoint: if the new generation is refused (in-flight limit), the offer stays open.
        async with session.begin_nested():
            row = await self._owned(session, generation_id, user_id, lock=True)
            if row.config.get("free_regeneration") != "offered" or row.status is not JobStatus.SUCCEEDED:
                raise FreeRegenerationUnavailable(str(generation_id))
            row.config = {**row.config, "free_regeneration": "used"}
            await session.flush()
            return await self.create(
                session=session,
                user_id=user_id,
                request=GenerationRequest(
                    source=Source.FREE,
                    aspect_ratio=str(row.config.get("aspect_ratio", DEFAULT_RATIO)),
                    num_images=int(row.config.get("num_images", 1)),
                    source_generation_id=row.id,
                ),
            )

    async def enqueue(self, generation_id: uuid.UUID) -> None:
        await self._enqueue(generation_id)

    # --- helpers -------------------------------------------------------------------------------

    async def _owned(
        self, session: AsyncSession, generation_id: uuid.UUID, user_id: int, *, lock: bool = False
    ) -> ImageGeneration:
        """Ownership is checked here, whatever the callback data said."""
        query = select(ImageGeneration).where(
            ImageGeneration.id == generation_id, ImageGeneration.user_id == user_id
        )
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        row: ImageGeneration | None = await session.scalar(query)
        if row is None:
            raise GenerationNotFound(str(generation_id))
        return row


__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_RATIO",
    "FINISH_JOB",
    "MAX_IMAGES",
    "NEW_CALLBACK",
    "AvatarChoice",
    "FalImageGenerator",
    "GalleryCard",
    "GenerationFailed",
    "GenerationNotifier",
    "GenerationRequest",
    "GenerationRules",
    "GenerationService",
    "GeneratorConfig",
    "ImageGenerator",
    "ProviderState",
    "Source",
    "action_callback",
    "result_buttons",
    "storage_prefix",
]
