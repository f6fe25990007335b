"""The one place a generation's outcome applies: download and store what was delivered, set the
status, capture or release the hold, tell the user, and check portraits for defects.

Every outcome (webhook, poll, timeout) is a conditional UPDATE on the row's status written in the
same transaction as the capture or release, so it applies exactly once however many webhooks,
polls and sweeps race for it. Capture and release use the keys `gen:<id>:capture` and
`gen:<id>:release`, so even a replay of the ledger call changes nothing.

"Delivered" means generated, not blocked by the safety checker, downloaded and stored: the
gallery has it even if Telegram fails to show it at that moment.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.models import AvatarType
from aisha.billing.errors import HoldAlreadyResolved, HoldNotFound
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.errors import GenerationFailed
from aisha.generation.models import (
    AT_PROVIDER,
    JOB_NAME,
    Finished,
    GenerationRules,
    ImageGeneration,
    Source,
    storage_prefix,
)
from aisha.generation.ports import GeneratedImages, GenerationEvents, ImageGenerator, JobFigures, Vision
from aisha.storage import ObjectStorage, StorageError
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

# In a generation's config: the message carrying its "What next?" buttons, while it is the newest.
ACTIONS_KEY = "actions_message_id"


class NoFigures:
    """No metrics: what a service built without them reports to."""

    async def job_failed(self, job: str, kind: str) -> None:
        return None

    async def generation_delivered(self, seconds: float) -> None:
        return None


@dataclass(slots=True)
class Delivery:
    results: list[dict[str, Any]] = field(default_factory=list)
    blocked: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class _Settled:
    """What the conditional UPDATE decided."""

    values: dict[str, Any]
    cost: int
    delivered: int


class Outcomes:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        ledger: LedgerService,
        prices: PriceList,
        generator: ImageGenerator | None,
        vision: Vision | None,
        events: Callable[[], GenerationEvents],
        rules: GenerationRules,
        metrics: JobFigures,
        forget_lora: Callable[[uuid.UUID], None],
    ) -> None:
        self._sessions = sessions
        self.clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._generator = generator
        self._vision = vision
        self._events = events
        self._rules = rules
        self._metrics = metrics
        self._forget_lora = forget_lora

    async def apply(
        self,
        generation_id: uuid.UUID,
        *,
        request_id: str | None,
        output: GeneratedImages | None,
        reason: str,
        pending: bool = False,
    ) -> bool:
        """Status, results, capture or release, exactly once. True if this call settled it.

        `pending`: the job never reached the provider (vision failed, no FAL): PENDING → FAILED.
        """
        async with self._sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            if row is None or row.status not in ((JobStatus.PENDING,) if pending else AT_PROVIDER):
                return False
            user_id, config, requested_at = row.user_id, dict(row.config), row.created_at
            avatar_id = row.avatar_id
        wanted = int(config.get("num_images", 1))
        delivery = Delivery(failed=wanted)
        if output is not None:
            delivery = await self._store(generation_id, user_id, output, wanted)
        settled = self._decide(config, delivery, output, wanted, reason)
        conditions: list[Any] = [ImageGeneration.id == generation_id]
        values = settled.values
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
        finished = await self._commit(generation_id, user_id, config, conditions, settled)
        if finished is None:
            return False  # another webhook, poll or sweep got here first
        log.info(
            "generation.finished",
            generation_id=str(generation_id),
            delivered=settled.delivered,
            blocked=delivery.blocked,
            failed=delivery.failed,
            captured=finished.captured,
        )
        await self._tell(generation_id, finished, delivery, avatar_id, requested_at, str(values.get("error")))
        return True

    def _decide(
        self,
        config: dict[str, Any],
        delivery: Delivery,
        output: GeneratedImages | None,
        wanted: int,
        reason: str,
    ) -> _Settled:
        delivered = len(delivery.results)
        unit, vision_price = int(config.get("unit_price", 0)), int(config.get("vision_price", 0))
        cost = unit * delivered + vision_price if delivered else 0
        now = self.clock.now()
        values: dict[str, Any] = {"finished_at": now, "updated_at": now}
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
        return _Settled(values, cost, delivered)

    async def _commit(
        self,
        generation_id: uuid.UUID,
        user_id: int,
        config: dict[str, Any],
        conditions: list[Any],
        settled: _Settled,
    ) -> Finished | None:
        """The conditional UPDATE and the capture or release, in one transaction."""
        captured = returned = 0
        async with unit_of_work(self._sessions) as session:
            outcome = (
                await session.execute(
                    update(ImageGeneration)
                    .where(*conditions)
                    .values(**settled.values)
                    .returning(ImageGeneration.user_id, ImageGeneration.hold_id, ImageGeneration.prompt)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if outcome is None:
                return None
            if outcome.hold_id is not None:
                try:
                    if settled.cost > 0:
                        resolution = await self._ledger.capture(
                            session=session,
                            hold_id=outcome.hold_id,
                            amount=settled.cost,
                            key=f"gen:{generation_id}:capture",
                            description="generation.ledger.capture",
                            description_args={"count": settled.delivered},
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
        return Finished(user_id, locale, config, outcome.prompt, captured, returned)

    async def _tell(
        self,
        generation_id: uuid.UUID,
        finished: Finished,
        delivery: Delivery,
        avatar_id: uuid.UUID | None,
        requested_at: datetime,
        error: str,
    ) -> None:
        if not delivery.results:
            if avatar_id is not None:
                self._forget_lora(avatar_id)  # its LoRA may be why: ask the CDN next time
            await self._events().failed(finished=finished, reason=error)
            await self._metrics.job_failed(JOB_NAME, error)
            return
        actions = await self._events().delivered(
            generation_id=generation_id,
            finished=finished,
            results=delivery.results,
            blocked=delivery.blocked,
            failed=delivery.failed,
        )
        await self._move_actions(generation_id, finished.user_id, actions)
        # The latency the user felt: from their confirmation to the images in the chat.
        await self._metrics.generation_delivered((self.clock.now() - requested_at).total_seconds())
        await self._check_quality(generation_id, finished, delivery.results)

    async def _move_actions(self, generation_id: uuid.UUID, user_id: int, message_id: int | None) -> None:
        """The newest result carries the "What next?" buttons: its message is recorded, and the
        older results' buttons go once that committed (a failed edit is the presenter's to log)."""
        if message_id is None:
            return
        async with unit_of_work(self._sessions) as session:
            older = (
                await session.scalars(
                    select(ImageGeneration)
                    .where(
                        ImageGeneration.user_id == user_id,
                        ImageGeneration.id != generation_id,
                        ImageGeneration.config[ACTIONS_KEY].as_integer().is_not(None),
                    )
                    .with_for_update()
                )
            ).all()
            previous = [int(row.config[ACTIONS_KEY]) for row in older]
            for row in older:
                row.config = {key: value for key, value in row.config.items() if key != ACTIONS_KEY}
            newest = await session.get(ImageGeneration, generation_id, with_for_update=True)
            if newest is not None:
                newest.config = {**newest.config, ACTIONS_KEY: message_id}
        for older_message in previous:
            await self._events().remove_buttons(user_id, older_message)

    async def _store(
        self, generation_id: uuid.UUID, user_id: int, output: GeneratedImages, wanted: int
    ) -> Delivery:
        """Download and store every image the safety checker let through."""
        delivery = Delivery()
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
            except (GenerationFailed, StorageError) as exc:
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

    async def _check_quality(
        self, generation_id: uuid.UUID, finished: Finished, results: list[dict[str, Any]]
    ) -> None:
        """Portraits only: the vision model looks for broken eyes, hands and faces."""
        vision = self._vision
        config = finished.config
        if (
            vision is None
            or not self._rules.quality_check
            or config.get("avatar_type") != AvatarType.PORTRAIT
        ):
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
        offer = defect and self._rules.free_regeneration and config.get("source") != Source.FREE.value
        async with unit_of_work(self._sessions) as session:
            values: dict[str, Any] = {"results": checked, "updated_at": self.clock.now()}
            if offer:  # read again: the buttons' message was recorded since
                current = await session.scalar(
                    select(ImageGeneration.config)
                    .where(ImageGeneration.id == generation_id)
                    .with_for_update()
                )
                values["config"] = {**(current or config), "free_regeneration": "offered"}
            await session.execute(
                update(ImageGeneration)
                .where(ImageGeneration.id == generation_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        if defect:
            await self._events().defect(
                user_id=finished.user_id, locale=finished.locale, generation_id=generation_id, free=offer
            )
