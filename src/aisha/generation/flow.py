"""The steps of a generation's job: run (vision, enhancement, submission; polling without
webhooks), a verified webhook (`apply_webhook`, which only queues `finish`), `finish`, and the
recovery sweep. Outcomes apply in `outcome.Outcomes`, exactly once.

Slow work (vision, the LLM, the image model, downloads) never runs inside a transaction. The row is
claimed (PENDING → SUBMITTED) before the submission, so two runs of the job never submit twice; a
submission whose outcome is unknown keeps its hold and is settled by its webhook or the timeout.

The webhook only checks the row and queues the `generation.finish` job, so the provider never
waits on downloads, Telegram or vision. A lost finish job is caught by the sweep, which polls the
provider for rows at the provider once `poll_after` has passed since the webhook touched them.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.models import LORA_KEY, Avatar, AvatarStatus
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import after_commit, unit_of_work
from aisha.generation.enhance import PromptEnhancer
from aisha.generation.errors import GenerationFailed
from aisha.generation.loras import LiveLoras
from aisha.generation.models import (
    AT_PROVIDER,
    IN_FLIGHT,
    GenerationRules,
    ImageGeneration,
    Source,
    owned_generation,
)
from aisha.generation.outcome import NoFigures, Outcomes
from aisha.generation.ports import (
    GeneratedImages,
    GenerationEvents,
    ImageGenerator,
    ImageJob,
    JobFigures,
    PromptSubject,
    ProviderState,
    Vision,
)
from aisha.messaging import Messenger, Tells
from aisha.remote import RemoteError, RemoteMalformedOutput, RemoteUnavailable, RemoteWebhook
from aisha.storage import ObjectStorage, StorageError
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Job:
    """A PENDING row as the job reads it."""

    user_id: int
    config: dict[str, Any]
    prompt: str
    enhanced: str | None
    avatar_id: uuid.UUID | None
    subject: PromptSubject | None
    lora_url: str | None
    lora_key: str | None
    locale: str

    @property
    def avatar_missing(self) -> bool:
        return self.avatar_id is not None and self.subject is None


class GenerationFlow(Tells[GenerationEvents]):
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
        rules: GenerationRules,
        enqueue: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_finish: Callable[[uuid.UUID, RemoteWebhook], Awaitable[None]],
        metrics: JobFigures | None = None,
        events: GenerationEvents | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._generator = generator
        self._enhancer = enhancer
        self._vision = vision
        self._messenger = messenger
        self._told = events
        self.rules = rules
        self._enqueue = enqueue
        self._enqueue_finish = enqueue_finish
        self._loras = LiveLoras(sessions=sessions, clock=clock, storage=storage, rules=rules)
        self._outcomes = Outcomes(
            sessions=sessions,
            clock=clock,
            storage=storage,
            ledger=ledger,
            prices=prices,
            generator=generator,
            vision=vision,
            events=lambda: self._events,
            rules=rules,
            metrics=metrics or NoFigures(),
            forget_lora=self._loras.forget,
        )

    async def _settle(
        self,
        generation_id: uuid.UUID,
        *,
        request_id: str | None = None,
        output: GeneratedImages | None = None,
        reason: str = "provider",
        pending: bool = False,
    ) -> bool:
        return await self._outcomes.apply(
            generation_id, request_id=request_id, output=output, reason=reason, pending=pending
        )

    # --- the `generation.run` job --------------------------------------------------------------

    async def run(self, *, generation_id: uuid.UUID) -> None:
        """The `generation.run` job: prompt (vision), enhancement, submission; polls without webhooks."""
        job = await self._read(generation_id)
        if job is None:
            return  # done by an earlier run, or gone
        generator = self._generator
        if generator is None or job.avatar_missing:
            await self._settle(generation_id, reason="unavailable", pending=True)
            return
        await self._events.action(job.user_id)
        if job.enhanced is None and not await self._enhance(generation_id, job):
            return
        assert job.enhanced is not None
        lora_url = job.lora_url
        if lora_url is not None and job.avatar_id is not None:
            try:
                lora_url = await self._loras.live(generator, job.avatar_id, lora_url, job.lora_key)
            except (RemoteError, StorageError) as exc:
                log.error("generation.lora_unavailable", generation_id=str(generation_id), error=str(exc))
                await self._settle(generation_id, reason="provider", pending=True)
                return
        config = job.config
        request = generator.request(
            prompt=job.enhanced,
            lora_url=lora_url,
            aspect_ratio=str(config["aspect_ratio"]),
            num_images=int(config["num_images"]),
            seed=int(config["seed"]),
        )
        if not await self._claim(generation_id, request, config):
            return
        await self._events.working(user_id=job.user_id, locale=job.locale, config=config, step="drawing")
        request_id = await self._submit(generator, generation_id, request)
        if request_id is not None and not generator.webhooks:
            await self._poll_until_done(generation_id, job.user_id, request.endpoint, request_id)

    async def _read(self, generation_id: uuid.UUID) -> _Job | None:
        async with self._sessions() as session:
            row = await session.get(ImageGeneration, generation_id)
            if row is None or row.status is not JobStatus.PENDING:
                return None
            subject, lora_url, lora_key = None, None, None
            if row.avatar_id is not None:
                avatar = await session.get(Avatar, row.avatar_id)
                if avatar is not None and avatar.status is AvatarStatus.READY and avatar.lora_url:
                    subject = PromptSubject(avatar.trigger_phrase, avatar.type)
                    lora_url = avatar.lora_url
                    lora_key = avatar.training_config.get(LORA_KEY)
            return _Job(
                user_id=row.user_id,
                config=dict(row.config),
                prompt=row.prompt,
                enhanced=row.enhanced_prompt,
                avatar_id=row.avatar_id,
                subject=subject,
                lora_url=lora_url,
                lora_key=lora_key,
                locale=await user_locale(session, row.user_id),
            )

    async def _enhance(self, generation_id: uuid.UUID, job: _Job) -> bool:
        """Vision (for a photo) and the enhancement, kept on the row; False if the job ended."""
        by_vision = Source(job.config.get("source", "text")).needs_vision
        if by_vision and not job.prompt:
            await self._events.working(
                user_id=job.user_id, locale=job.locale, config=job.config, step="looking"
            )
            described = await self._describe(job.user_id, job.config)
            if described is None:
                await self._settle(generation_id, reason="vision", pending=True)
                return False
            job.prompt = described
        result = await self._enhancer.enhance(job.prompt, subject=job.subject, llm=not by_vision)
        job.enhanced = result.text
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(ImageGeneration)
                .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.PENDING)
                .values(
                    prompt=job.prompt,
                    enhanced_prompt=job.enhanced,
                    config={**job.config, "llm_enhanced": result.llm_used},
                    updated_at=self._clock.now(),
                )
                .execution_options(synchronize_session=False)
            )
        job.config["llm_enhanced"] = result.llm_used
        return True

    async def _claim(self, generation_id: uuid.UUID, request: ImageJob, config: dict[str, Any]) -> bool:
        """PENDING → SUBMITTED before the submission: a second run of this job finds it and stops."""
        async with unit_of_work(self._sessions) as session:
            claimed = (
                await session.execute(
                    update(ImageGeneration)
                    .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.PENDING)
                    .values(
                        status=JobStatus.SUBMITTED,
                        provider_endpoint=request.endpoint,
                        config={**config, **request.settings},
                        updated_at=self._clock.now(),
                    )
                    .returning(ImageGeneration.id)
                    .execution_options(synchronize_session=False)
                )
            ).first()
        return claimed is not None

    async def _submit(
        self, generator: ImageGenerator, generation_id: uuid.UUID, request: ImageJob
    ) -> str | None:
        """The submission; its request id (None when it is unknown or the generation ended)."""
        try:
            request_id = await generator.submit(request, generation_id=generation_id)
        except RemoteUnavailable as exc:
            if not exc.maybe_submitted:
                await self._settle(generation_id, reason="provider")
                return None
            # The provider may have queued it: keep the hold; its webhook or the timeout settles it.
            log.warning("generation.submit_outcome_unknown", generation_id=str(generation_id), error=str(exc))
            return None
        except RemoteError as exc:
            log.warning("generation.submit_refused", generation_id=str(generation_id), error=str(exc))
            await self._settle(generation_id, reason="provider")
            return None
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
        return request_id

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
                source = await owned_generation(session, source_id, user_id)
                key = str(source.results[int(config.get("source_index", 0))]["key"])
            return await self._storage.get(key)
        with tempfile.TemporaryDirectory(prefix="aisha-like-") as folder:
            path = Path(folder) / "photo"
            await self._messenger.download(str(config["source_file_id"]), path)
            return await asyncio.to_thread(path.read_bytes)

    async def _poll_until_done(
        self, generation_id: uuid.UUID, user_id: int, endpoint: str, request_id: str
    ) -> None:
        """Polling mode: ask the provider until the job ends; past the timeout the sweep takes over."""
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
                await self._events.action(user_id)
                last_action = loop.time()

    async def _in_flight(self, generation_id: uuid.UUID) -> bool:
        async with self._sessions() as session:
            status = await session.scalar(
                select(ImageGeneration.status).where(ImageGeneration.id == generation_id)
            )
        return status in IN_FLIGHT

    # --- outcomes ------------------------------------------------------------------------------

    async def apply_webhook(self, *, generation_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified provider webhook for this generation: queue `finish`. True if it was queued."""
        async with unit_of_work(self._sessions) as session:
            row = await session.get(ImageGeneration, generation_id, with_for_update=True)
            if row is None or row.status not in AT_PROVIDER:
                return False  # a delivery repeated after the job settled it, or deleted meanwhile
            # Only the signed request id counts; the URL's id only says where to look.
            if row.provider_request_id not in (None, webhook.request_id):
                log.warning("generation.webhook_request_mismatch", generation_id=str(generation_id))
                return False
            # A submission whose answer was lost learns its request id here, so the sweep can poll
            # the provider if the job is lost; the fresh `updated_at` gives the job `poll_after` first.
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
        output: GeneratedImages | None = None
        if webhook.ok:
            try:
                if self._generator is None:
                    raise RemoteMalformedOutput(webhook.payload_error or "no payload")
                output = self._generator.parse(webhook.payload)
            except RemoteMalformedOutput:
                try:
                    output = await self._fetch_result(endpoint, webhook.request_id)
                except RemoteError as exc:
                    # The provider can't say now: the sweep polls this row once `poll_after` has passed.
                    log.warning(
                        "generation.result_unavailable", generation_id=str(generation_id), error=str(exc)
                    )
                    return False
        else:
            log.info("generation.provider_error", generation_id=str(generation_id), error=webhook.error)
        return await self._settle(generation_id, request_id=webhook.request_id, output=output)

    async def _fetch_result(self, endpoint: str, request_id: str) -> GeneratedImages | None:
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
        """Ask the provider about one job. True when the generation was settled by this call."""
        generator = self._generator
        if generator is None:
            return False
        try:
            state = await generator.state(endpoint=endpoint, request_id=request_id)
            output = await self._fetch_result(endpoint, request_id) if state is ProviderState.DONE else None
        except RemoteError as exc:
            log.warning("generation.poll_failed", generation_id=str(generation_id), error=str(exc))
            return False
        if state in (ProviderState.DONE, ProviderState.UNKNOWN):
            return await self._settle(generation_id, request_id=request_id, output=output)
        if state is ProviderState.RUNNING:
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(ImageGeneration)
                    .where(ImageGeneration.id == generation_id, ImageGeneration.status == JobStatus.SUBMITTED)
                    .values(status=JobStatus.RUNNING, updated_at=self._clock.now())
                    .execution_options(synchronize_session=False)
                )
        return False

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
                if not timed_out:
                    await self._enqueue(row.id)  # the job was lost: the row says what to do
                    handled += 1
                elif await self._settle(row.id, reason="timeout", pending=True):
                    handled += 1
                continue
            endpoint, request_id = row.provider_endpoint, row.provider_request_id
            if (
                endpoint
                and request_id
                and await self._poll(row.id, endpoint, request_id, timed_out=timed_out)
            ):
                handled += 1
                continue
            if timed_out:
                await self._cancel(row.id, endpoint, request_id)
                if await self._settle(row.id, reason="timeout"):
                    handled += 1
        return handled

    async def _cancel(self, generation_id: uuid.UUID, endpoint: str | None, request_id: str | None) -> None:
        if self._generator is None or not endpoint or not request_id:
            return
        try:
            await self._generator.cancel(endpoint=endpoint, request_id=request_id)
        except RemoteError as exc:
            log.warning("generation.cancel_failed", generation_id=str(generation_id), error=str(exc))
