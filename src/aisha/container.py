"""The one place that wires everything: settings in, the set of services out.

The bot, the HTTP app and the workers all receive the same `Services`. It only builds objects: it
imports no adapter (`bot/`, `api/`); the jobs are registered by `jobs/tasks.py`, the FAL webhook
kinds routed by `api/fal.py`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aisha.admin.ports import BROADCAST_JOB
from aisha.admin.service import AdminRules, AdminService
from aisha.avatars.models import AvatarRules
from aisha.avatars.ports import KEEP_JOB as AVATAR_KEEP_JOB
from aisha.avatars.ports import PHOTO_JOB as AVATAR_PHOTO_JOB
from aisha.avatars.ports import TRAIN_JOB as AVATAR_TRAIN_JOB
from aisha.avatars.service import AvatarService
from aisha.avatars.validation import NUDENET, PhotoValidator, ValidationThresholds
from aisha.billing.payments import PaymentService, StarRefunds
from aisha.billing.prices import PriceList, load_prices
from aisha.billing.service import LedgerService
from aisha.clock import Clock, SystemClock
from aisha.config import Settings
from aisha.db.session import create_engine, create_session_factory
from aisha.generation.enhance import PromptEnhancer
from aisha.generation.flow import GenerationFlow
from aisha.generation.models import FINISH_JOB as GENERATION_FINISH_JOB
from aisha.generation.models import JOB_NAME as GENERATION_JOB
from aisha.generation.models import GenerationRules
from aisha.generation.service import GenerationService
from aisha.i18n import Translator
from aisha.jobs.metrics import create_job_metrics
from aisha.jobs.queue import JobQueue, create_broker
from aisha.jobs.recovery import RecoverySweep
from aisha.messaging import Messenger
from aisha.metrics import Metrics
from aisha.notices import NoticeRules, NoticeService
from aisha.operations import PaidOperations
from aisha.providers.fal import FalClient
from aisha.providers.fal_images import FalImageGenerator, GeneratorConfig
from aisha.providers.fal_training import FalTrainer, TrainerConfig
from aisha.providers.fal_webhook import FalWebhookVerifier
from aisha.providers.openai_chat import OpenAIPromptWriter, OpenAIVision
from aisha.providers.redis_locks import create_user_locks
from aisha.providers.redis_throttle import RedisThrottle
from aisha.providers.speech import speech_setup
from aisha.remote import RemoteWebhook
from aisha.storage import ObjectStorage, create_storage
from aisha.storage.links import LinkSigner, link_secret
from aisha.support.service import SupportService
from aisha.throttle import MemoryThrottle, Throttle
from aisha.transcription.flow import JOB_NAME as TRANSCRIPTION_JOB
from aisha.transcription.flow import TranscriptionFlow
from aisha.transcription.ledger import TranscriptLedger
from aisha.transcription.models import TranscriptionSettings
from aisha.transcription.service import TranscriptionService
from aisha.users.locks import UserLocks
from aisha.users.privacy import PrivacyService
from aisha.users.service import UserService

if TYPE_CHECKING:
    # Imported where a client is built: only a process configured for OpenAI pays for the openai
    # package (over a second of start-up and 14 MB here).
    from openai import AsyncOpenAI


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: ObjectStorage
    translator: Translator
    prices: PriceList
    ledger: LedgerService
    payments: PaymentService
    users: UserService
    queue: JobQueue
    messenger: Messenger
    link_signer: LinkSigner | None = None
    recovery: RecoverySweep = field(default_factory=RecoverySweep)
    # FAL: one HTTP pool for the queue client and the webhook keys (api/fal.py routes webhooks by kind).
    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)
    fal: FalClient | None = None  # None without FAL_KEY: avatars and generation are unavailable
    fal_verifier: FalWebhookVerifier | None = None
    avatars: AvatarService = field(init=False)
    transcription: TranscriptionService = field(init=False)
    transcription_flow: TranscriptionFlow = field(init=False)  # the transcription job's steps
    generation: GenerationService = field(init=False)
    generation_flow: GenerationFlow = field(init=False)  # the generation jobs' steps
    openai_chat: AsyncOpenAI | None = None  # prompts and vision (generation)
    metrics: Metrics = field(default_factory=Metrics)  # this process's counters; GET /metrics
    admin: AdminService = field(init=False)
    throttle: Throttle | None = None  # per-user rate limit; None when THROTTLE_RATE=0
    privacy: PrivacyService = field(init=False)
    support: SupportService = field(init=False)
    locks: UserLocks = field(default_factory=UserLocks)  # one operation per user at a time
    notices: NoticeService = field(init=False)  # messages owed, sent after commit
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # e.g. worker pools

    async def aclose(self) -> None:
        for close in self.closers:
            await close()
        if self.throttle is not None:
            await self.throttle.aclose()
        await self.locks.aclose()
        await self.metrics.jobs.aclose()
        if self.openai_chat is not None:
            await self.openai_chat.close()
        await self.http.aclose()
        await self.storage.aclose()
        await self.engine.dispose()


def create_throttle(*, redis_url: str | None, rate: int, period: int, clock: Clock) -> Throttle | None:
    """The per-user rate limit: in Redis when there is one, else in memory; None when the rate is 0."""
    if rate <= 0:
        return None
    if redis_url:
        return RedisThrottle.from_url(redis_url, rate=rate, period=period, clock=clock)
    return MemoryThrottle(rate=rate, period=period, clock=clock)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def build_services(
    settings: Settings,
    *,
    messenger: Messenger,
    clock: Clock | None = None,
    refunds: StarRefunds | None = None,
) -> Services:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url)
    sessions = create_session_factory(engine)
    prices = load_prices(settings.prices_file, environ=os.environ)  # PRICE_*, PROVIDER_COST_*
    # Signed links to stored files exist only where FAL can reach us: webhook mode.
    signer = None
    if settings.public_base_url and settings.bot_token:
        signer = LinkSigner(link_secret(settings.bot_token.get_secret_value()), settings.public_base_url)
    ledger = build_ledger(settings, clock)
    # Job errors and generation latency: shared through Redis, where workers and API processes meet.
    metrics = Metrics(create_job_metrics(settings.redis_url))
    services = Services(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=sessions,
        storage=create_storage(
            settings.storage_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_public_endpoint_url=settings.s3_public_endpoint_url,
            s3_access_key=_secret(settings.s3_access_key),
            s3_secret_key=_secret(settings.s3_secret_key),
            s3_region=settings.s3_region,
            url_signer=signer.sign if signer else None,
        ),
        translator=Translator.load(settings.default_locale),
        prices=prices,
        ledger=ledger,
        payments=PaymentService(
            ledger=ledger,
            prices=prices,
            sessions=sessions,
            refunds=refunds,
            max_refund_asks=settings.refund_max_asks,
        ),
        users=UserService(clock=clock, ledger=ledger, welcome_bonus=settings.welcome_bonus),
        queue=JobQueue(create_broker(settings.redis_url), metrics=metrics.jobs),
        messenger=messenger,
        link_signer=signer,
        recovery=RecoverySweep(metrics=metrics.jobs),
        metrics=metrics,
        locks=create_user_locks(settings.redis_url),
    )
    services.privacy = PrivacyService(clock=clock, ledger=ledger, storage=services.storage)
    services.support = SupportService(ledger=ledger, operator_ids=settings.admin_ids)
    services.notices = NoticeService(
        sessions=sessions,
        clock=clock,
        messenger=messenger,
        rules=NoticeRules(
            max_attempts=settings.notice_max_attempts,
            retry_base=timedelta(seconds=settings.notice_retry_seconds),
        ),
    )
    if settings.fal_key:
        services.fal = FalClient(
            key=settings.fal_key.get_secret_value(),
            queue_url=settings.fal_queue_url,
            rest_url=settings.fal_rest_url,
            http=services.http,
            timeout=settings.fal_timeout_seconds,
        )
    _wire_avatars(services)
    _wire_transcription(services)
    _wire_generation(services)
    _wire_admin(services)
    return services


def _wire_admin(services: Services) -> None:
    """Admin: statistics, credits by hand, blocking, broadcasts (their job: `aisha.jobs.admin`);
    the throttle."""
    settings = services.settings
    services.throttle = create_throttle(
        redis_url=settings.redis_url,
        rate=settings.throttle_rate,
        period=settings.throttle_period_seconds,
        clock=services.clock,
    )

    async def enqueue_broadcast(broadcast_id: uuid.UUID) -> None:
        await services.queue.enqueue(BROADCAST_JOB, broadcast_id=str(broadcast_id))

    services.admin = AdminService(
        sessions=services.sessions,
        clock=services.clock,
        ledger=services.ledger,
        messenger=services.messenger,
        rules=admin_rules(settings),
        enqueue=enqueue_broadcast,
    )


def admin_rules(settings: Settings) -> AdminRules:
    return AdminRules(
        admin_ids=settings.admin_ids,
        broadcast_rate=settings.broadcast_rate,
        credit_value_micro_usd=settings.credit_value_micro_usd,
    )


def build_ledger(settings: Settings, clock: Clock) -> LedgerService:
    return LedgerService(clock=clock, hold_ttl=timedelta(seconds=settings.hold_ttl_seconds))


@dataclass
class AdminTools:
    """What `aisha admin` and `aisha ledger` work with: the database, the ledger and the admin
    service, built as `build_services` builds them, with no bot (broadcasts are only stored: the
    running bot or worker sends them)."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    ledger: LedgerService
    admin: AdminService

    async def aclose(self) -> None:
        await self.engine.dispose()


def build_admin(settings: Settings, *, clock: Clock | None = None) -> AdminTools:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url)
    sessions = create_session_factory(engine)
    ledger = build_ledger(settings, clock)
    admin = AdminService(
        sessions=sessions, clock=clock, ledger=ledger, messenger=None, rules=admin_rules(settings)
    )
    return AdminTools(engine=engine, sessions=sessions, ledger=ledger, admin=admin)


def _generation_providers(
    services: Services,
) -> tuple[FalImageGenerator | None, OpenAIPromptWriter | None, OpenAIVision | None]:
    """FLUX on FAL and the OpenAI chat models, each None when its key is not set."""
    settings = services.settings
    generator = None
    if services.fal is not None:
        generator = FalImageGenerator(
            services.fal,
            services.http,
            GeneratorConfig(
                lora_endpoint=settings.fal_image_lora_endpoint,
                plain_endpoint=settings.fal_image_endpoint,
                steps=settings.generation_steps,
                guidance_scale=settings.generation_guidance_scale,
                lora_scale=settings.generation_lora_scale,
            ),
            public_base_url=settings.public_base_url,
        )
    writer, vision = None, None
    if settings.openai_api_key:
        from openai import AsyncOpenAI

        # One retry at most: a slow model must not hold a generation up; enhancement falls back.
        services.openai_chat = AsyncOpenAI(
            api_key=settings.openai_api_key.get_secret_value(),
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_seconds,
            max_retries=1,
        )
        writer = OpenAIPromptWriter(services.openai_chat, model=settings.openai_chat_model)
        vision = OpenAIVision(services.openai_chat, model=settings.openai_vision_model)
    return generator, writer, vision


def _wire_generation(services: Services) -> None:
    """Image generation: FLUX on FAL, prompt enhancement and vision on OpenAI (each optional), the
    service and its job flow, and the `generation` kind of FAL webhooks (which queue
    `generation.finish`). `jobs.generation` registers the jobs and attaches the presenter."""
    settings = services.settings
    generator, writer, vision = _generation_providers(services)

    async def enqueue(generation_id: uuid.UUID) -> None:
        await services.queue.enqueue(GENERATION_JOB, generation_id=str(generation_id))

    async def enqueue_finish(generation_id: uuid.UUID, webhook: RemoteWebhook) -> None:
        # The webhook's fields are plain JSON (an image result is a few KB): the job gets them all.
        await services.queue.enqueue(
            GENERATION_FINISH_JOB, generation_id=str(generation_id), webhook=asdict(webhook)
        )

    rules = GenerationRules(
        max_in_flight=settings.generation_max_in_flight,
        timeout=timedelta(seconds=settings.generation_timeout_seconds),
        poll_after=timedelta(seconds=settings.generation_poll_after_seconds),
        poll_interval=settings.generation_poll_interval_seconds,
        prompt_max_length=settings.prompt_max_length,
        free_regeneration=settings.generation_free_regeneration,
        quality_check=settings.generation_quality_check,
    )
    services.generation_flow = GenerationFlow(
        sessions=services.sessions,
        clock=services.clock,
        storage=services.storage,
        ledger=services.ledger,
        prices=services.prices,
        generator=generator,
        enhancer=PromptEnhancer(writer=writer, timeout=settings.openai_timeout_seconds),
        vision=vision,
        messenger=services.messenger,
        rules=rules,
        enqueue=enqueue,
        enqueue_finish=enqueue_finish,
        metrics=services.metrics.jobs,
    )
    services.generation = GenerationService(
        clock=services.clock,
        storage=services.storage,
        ledger=services.ledger,
        prices=services.prices,
        operations=PaidOperations(services.locks),
        flow=services.generation_flow,
        rules=rules,
        enqueue=enqueue,
        available=generator is not None,
        vision_available=vision is not None,
    )


def _wire_transcription(services: Services) -> None:
    """Transcription: the speech backend and the pipeline around it (see
    `aisha.providers.speech`), the service, and the job's flow (given the bot's presenter by
    `aisha.jobs.transcription`)."""
    speech = speech_setup(services.settings, services.prices)
    if speech.close is not None:
        services.closers.append(speech.close)
    pipeline, prices = speech.pipeline, speech.prices
    settings = services.settings

    async def enqueue(transcript_id: uuid.UUID) -> None:
        await services.queue.enqueue(TRANSCRIPTION_JOB, transcript_id=str(transcript_id))

    rules = TranscriptionSettings(
        keep_audio=settings.transcription_keep_audio,
        model=speech.model,
        max_in_flight=settings.transcription_max_in_flight,
    )
    services.transcription = TranscriptionService(
        operations=PaidOperations(services.locks),
        files=services.messenger,
        storage=services.storage,
        settings=rules,
        enqueue=enqueue,
        available=pipeline is not None,
    )
    ledger = TranscriptLedger(
        sessions=services.sessions, clock=services.clock, ledger=services.ledger, prices=prices
    )

    services.transcription_flow = TranscriptionFlow(
        sessions=services.sessions,
        clock=services.clock,
        ledger=ledger,
        storage=services.storage,
        files=services.messenger,
        pipeline=pipeline,
        settings=rules,
        metrics=services.metrics.jobs,
    )


def _wire_avatars(services: Services) -> None:
    """Avatars: the trainer on FAL, the photo checks, the service and webhook routing (its jobs:
    `jobs/avatars.py`)."""
    settings = services.settings
    services.fal_verifier = FalWebhookVerifier(
        settings.fal_jwks_url, http=services.http, clock=services.clock, user_id=settings.fal_user_id
    )
    trainer = None
    if services.fal is not None:
        trainer = FalTrainer(
            services.fal,
            TrainerConfig(
                portrait_endpoint=settings.fal_portrait_endpoint,
                style_endpoint=settings.fal_style_endpoint,
                portrait_steps=settings.avatar_portrait_steps,
                style_steps=settings.avatar_style_steps,
                public_base_url=settings.public_base_url,
            ),
        )
    thresholds = ValidationThresholds(
        min_short_side=settings.photo_min_short_side,
        min_sharpness=settings.photo_min_sharpness,
        duplicate_max_distance=settings.photo_duplicate_max_distance,
    )

    async def enqueue_training(avatar_id: uuid.UUID) -> None:
        await services.queue.enqueue(AVATAR_TRAIN_JOB, avatar_id=str(avatar_id))

    async def enqueue_keep(avatar_id: uuid.UUID) -> None:
        await services.queue.enqueue(AVATAR_KEEP_JOB, avatar_id=str(avatar_id))

    async def enqueue_photo(**photo: Any) -> None:
        await services.queue.enqueue(AVATAR_PHOTO_JOB, **photo)

    services.avatars = AvatarService(
        sessions=services.sessions,
        clock=services.clock,
        storage=services.storage,
        ledger=services.ledger,
        prices=services.prices,
        validator=PhotoValidator(thresholds, NUDENET if settings.photo_nsfw_check else None),
        trainer=trainer,
        messenger=services.messenger,
        rules=AvatarRules(
            min_photos=settings.avatar_min_photos,
            max_photos=settings.avatar_max_photos,
            training_timeout=timedelta(seconds=settings.avatar_training_timeout_seconds),
            poll_after=timedelta(seconds=settings.avatar_poll_after_seconds),
            photo_retention=timedelta(seconds=settings.avatar_photo_retention_seconds),
            draft_ttl=timedelta(seconds=settings.avatar_draft_ttl_seconds),
            duplicate_max_distance=settings.photo_duplicate_max_distance,
            archive_route=settings.archive_route,
        ),
        operations=PaidOperations(services.locks),
        enqueue_training=enqueue_training,
        enqueue_keep=enqueue_keep,
        enqueue_photo=enqueue_photo,
        metrics=services.metrics.jobs,
    )
