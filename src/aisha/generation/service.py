"""Image generation rules: quote, check, create with its hold, start, the gallery and deletion.

Money and status move together. A generation is created with its credit hold in one transaction
(`start`, through the paid-operation primitive: the user's lock, the hold and the PENDING row,
then the `generation.run` job queued after commit). What happens next (vision, the LLM, the image
model, downloads, delivery, capture or release) is `flow.GenerationFlow`'s, in jobs.

Every input of the user is checked here, once: the prompt, the aspect ratio, the image count, and
the ownership of every generation and avatar an id names.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.models import Avatar, AvatarStatus, AvatarType
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import after_commit
from aisha.generation.errors import (
    AvatarNotReady,
    EmptyPrompt,
    FreeRegenerationUnavailable,
    GenerationNotFound,
    GenerationUnavailable,
    InvalidRequest,
    PromptTooLong,
    TooManyInFlight,
    VisionUnavailable,
    WrongGenerationStatus,
)
from aisha.generation.flow import GenerationFlow
from aisha.generation.models import (
    ASPECT_RATIOS,
    DEFAULT_RATIO,
    IN_FLIGHT,
    MAX_IMAGES,
    AvatarChoice,
    DraftBasis,
    GalleryCard,
    GenerationRequest,
    GenerationRules,
    ImageGeneration,
    Source,
    owned_generation,
    storage_prefix,
)
from aisha.operations import PaidOperations
from aisha.remote import RemoteWebhook
from aisha.storage import ObjectStorage, StorageError

log = structlog.get_logger(__name__)
__all__ = ["GenerationService", "Source"]


class GenerationService:
    def __init__(
        self,
        *,
        clock: Clock,
        storage: ObjectStorage,
        ledger: LedgerService,
        prices: PriceList,
        operations: PaidOperations,
        flow: GenerationFlow,
        rules: GenerationRules,
        enqueue: Callable[[uuid.UUID], Awaitable[None]],
        available: bool,
        vision_available: bool,
    ) -> None:
        self._clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._operations = operations
        self._flow = flow
        self.rules = rules
        self._enqueue = enqueue
        self.available = available
        self.vision_available = vision_available

    # --- quoting and checks --------------------------------------------------------------------

    @property
    def photo_to_prompt_price(self) -> int:
        return self._prices.photo_to_prompt

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

    @staticmethod
    def check_options(*, aspect_ratio: str, num_images: int) -> None:
        if aspect_ratio not in ASPECT_RATIOS:
            raise InvalidRequest(f"unknown aspect ratio {aspect_ratio!r}")
        if not 1 <= num_images <= MAX_IMAGES:
            raise InvalidRequest(f"num_images must be 1..{MAX_IMAGES}")

    async def main_avatar(self, *, session: AsyncSession, user_id: int) -> AvatarChoice | None:
        """The user's main READY avatar; else their newest READY one; None without one."""
        avatars = await self.ready_avatars(session=session, user_id=user_id)
        return avatars[0] if avatars else None

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

    async def trigger_phrase(self, *, session: AsyncSession, avatar_id: uuid.UUID | None) -> str | None:
        """The trigger phrase of a generation's avatar (None if it has none, or it was deleted)."""
        avatar = await session.get(Avatar, avatar_id) if avatar_id else None
        return avatar.trigger_phrase if avatar else None

    async def prepare(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        source: Source,
        prompt: str = "",
        from_generation: uuid.UUID | None = None,
        index: int = 0,
        chosen_avatar: uuid.UUID | None = None,
    ) -> DraftBasis:
        """What a new card offers. `chosen_avatar`: the avatar whose "Create image" was pressed.

        Raises GenerationUnavailable, VisionUnavailable, EmptyPrompt, PromptTooLong,
        GenerationNotFound (a source generation or image that is not the user's).
        """
        if not self.available:
            raise GenerationUnavailable("FAL_KEY is not set")
        if source.needs_vision and not self.vision_available:
            raise VisionUnavailable("no vision model: OPENAI_API_KEY is not set")
        checked = self.check_prompt(prompt) if source is Source.TEXT else ""
        ratio, count, avatar = DEFAULT_RATIO, 1, None
        if from_generation is not None:
            row = await owned_generation(session, from_generation, user_id)
            if source is Source.LIKE and not 0 <= index < len(row.results):
                raise GenerationNotFound(str(from_generation))
            if source is Source.REGENERATE:
                checked = row.prompt
                ratio = str(row.config.get("aspect_ratio", DEFAULT_RATIO))
                count = int(row.config.get("num_images", 1))
                # The same avatar as before (none if it was deleted since).
                if row.avatar_id is not None:
                    avatar = await self.avatar_choice(
                        session=session, user_id=user_id, avatar_id=row.avatar_id
                    )
        if source is not Source.REGENERATE:
            # The avatar whose "Create image" button was pressed, if it is still there; else the main one.
            if chosen_avatar is not None:
                avatar = await self.avatar_choice(session=session, user_id=user_id, avatar_id=chosen_avatar)
            if avatar is None:
                avatar = await self.main_avatar(session=session, user_id=user_id)
        return DraftBasis(checked, ratio, count, avatar)

    # --- starting ------------------------------------------------------------------------------

    async def start(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        request: GenerationRequest,
        status_message_id: int | None = None,
    ) -> ImageGeneration:
        """The user confirmed: lock, hold and write the PENDING row, queue `run` after commit.

        `status_message_id`: the message the job keeps editing. Raises Busy and what `create` raises.
        """
        return await self._operations.start(
            session,
            user_id=user_id,
            begin=lambda: self.create(
                session=session, user_id=user_id, request=request, status_message_id=status_message_id
            ),
            enqueue=lambda generation: self._enqueue(generation.id),
        )

    async def start_free_regeneration(
        self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID, status_message_id: int
    ) -> ImageGeneration:
        """The one free regeneration a defect earned, started as `start` starts a paid one."""
        return await self._operations.start(
            session,
            user_id=user_id,
            begin=lambda: self.take_free_regeneration(
                session=session,
                user_id=user_id,
                generation_id=generation_id,
                status_message_id=status_message_id,
            ),
            enqueue=lambda generation: self._enqueue(generation.id),
        )

    async def create(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        request: GenerationRequest,
        status_message_id: int | None = None,
    ) -> ImageGeneration:
        """Hold the credits and write the PENDING row, in the caller's transaction.

        Raises InsufficientCredits (nothing reserved), TooManyInFlight, AvatarNotReady,
        GenerationNotFound (a source that is not the user's), GenerationUnavailable, InvalidRequest,
        prompt errors. The caller enqueues `run` after its commit (`start` does).
        """
        if not self.available:
            raise GenerationUnavailable("FAL_KEY is not set")
        if request.source.needs_vision and not self.vision_available:
            raise VisionUnavailable("no vision model: OPENAI_API_KEY is not set")
        self.check_options(aspect_ratio=request.aspect_ratio, num_images=request.num_images)
        prompt, enhanced, avatar_id, config = await self._source(session, user_id, request)
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
            "num_images": request.num_images,
            "seed": random.randrange(2**31),
            "unit_price": 0 if request.source is Source.FREE else self.unit_price(with_avatar=with_avatar),
            "vision_price": self._prices.photo_to_prompt if request.source.needs_vision else 0,
            "avatar_type": avatar_type.value if avatar_type else None,
        }
        if status_message_id is not None:
            config["status_message_id"] = status_message_id
        generation = ImageGeneration(
            id=uuid.uuid4(),
            user_id=user_id,
            avatar_id=avatar_id,
            status=JobStatus.PENDING,
            prompt=prompt,
            enhanced_prompt=enhanced,
            config=config,
            results=[],
            price=price,
            cost=0,
            provider_cost_micro_usd=0,
        )
        await self._hold_and_add(session, generation, request.num_images)
        log.info(
            "generation.created", generation_id=str(generation.id), source=request.source.value, price=price
        )
        return generation

    async def _source(
        self, session: AsyncSession, user_id: int, request: GenerationRequest
    ) -> tuple[str, str | None, uuid.UUID | None, dict[str, Any]]:
        """What the request's source gives: prompt, enhanced prompt, avatar, and the row's config."""
        prompt, enhanced, avatar_id = "", None, request.avatar_id
        config: dict[str, Any] = {"source": request.source.value}
        source = None
        if request.source_generation_id is not None:
            source = await owned_generation(session, request.source_generation_id, user_id)
            config["source_generation_id"] = str(source.id)
        if request.source is Source.TEXT:
            prompt = self.check_prompt(request.prompt)
        elif request.source is Source.PHOTO:
            if not request.source_file_id:
                raise InvalidRequest("a photo source needs its file id")
            config["source_file_id"] = request.source_file_id
        elif request.source is Source.LIKE:
            if source is None or not 0 <= request.source_index < len(source.results):
                raise GenerationNotFound(str(request.source_generation_id))
            config["source_index"] = request.source_index
        else:  # REGENERATE, FREE: the same prompt and avatar, a new seed
            if source is None or source.status is not JobStatus.SUCCEEDED:
                raise GenerationNotFound(str(request.source_generation_id))
            prompt, enhanced, avatar_id = source.prompt, source.enhanced_prompt, source.avatar_id
        return prompt, enhanced, avatar_id, config

    async def _hold_and_add(self, session: AsyncSession, generation: ImageGeneration, count: int) -> None:
        generation_id, user_id = generation.id, generation.user_id
        now = self._clock.now()
        generation.created_at = generation.updated_at = now
        # A savepoint: a refused hold or the in-flight limit leaves nothing behind.
        async with session.begin_nested():
            if generation.price > 0:
                hold = await self._ledger.hold(
                    session=session,
                    user_id=user_id,
                    amount=generation.price,
                    key=f"gen:{generation_id}:hold",
                    reference=f"gen:{generation_id}",
                    description="generation.ledger.hold",
                    description_args={"count": count},
                )
                generation.hold_id = hold.hold_id
            # Counted after the hold locked the user's account row: two confirms can't both pass.
            in_flight = await session.scalar(
                select(func.count())
                .select_from(ImageGeneration)
                .where(ImageGeneration.user_id == user_id, ImageGeneration.status.in_(IN_FLIGHT))
            )
            if int(in_flight or 0) >= self.rules.max_in_flight:
                raise TooManyInFlight(self.rules.max_in_flight, running=int(in_flight or 0))
            session.add(generation)
            await session.flush()

    async def take_free_regeneration(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        generation_id: uuid.UUID,
        status_message_id: int | None = None,
    ) -> ImageGeneration:
        """The one free regeneration a defect earned; FreeRegenerationUnavailable otherwise."""
        # A savepoint: if the new generation is refused (in-flight limit), the offer stays open.
        async with session.begin_nested():
            row = await owned_generation(session, generation_id, user_id, lock=True)
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
                status_message_id=status_message_id,
            )

    async def apply_webhook(self, *, generation_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified provider webhook for this generation: see `GenerationFlow.apply_webhook`."""
        return await self._flow.apply_webhook(generation_id=generation_id, webhook=webhook)

    async def enqueue(self, generation_id: uuid.UUID) -> None:
        await self._enqueue(generation_id)

    # --- gallery and actions -------------------------------------------------------------------

    async def get(self, *, session: AsyncSession, user_id: int, generation_id: uuid.UUID) -> ImageGeneration:
        return await owned_generation(session, generation_id, user_id)

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
        row = await owned_generation(session, generation_id, user_id)
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
        row = await owned_generation(session, generation_id, user_id, lock=True)
        if row.status in IN_FLIGHT:
            raise WrongGenerationStatus(row.status.value)
        await session.delete(row)
        await session.flush()
        # Storage is not called inside the caller's transaction: the files go after its commit.
        after_commit(session, lambda: self._storage.delete_prefix(storage_prefix(user_id, generation_id)))
