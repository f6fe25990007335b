"""The one place that wires everything: settings in, the set of services out.

The bot, the HTTP app and the workers all receive the same `Services`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aisha.clock import Clock, SystemClock
from aisha.config import Settings
from aisha.db.session import create_engine, create_session_factory
from aisha.i18n import Translator
from aisha.jobs.queue import JobQueue, create_broker
from aisha.jobs.recovery import RecoverySweep
from aisha.storage import ObjectStorage, create_storage
from aisha.users.service import UserService


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    storage: ObjectStorage
    translator: Translator
    users: UserService
    queue: JobQueue
    recovery: RecoverySweep = field(default_factory=RecoverySweep)

    async def aclose(self) -> None:
        await self.storage.aclose()
        await self.engine.dispose()


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url)
    secret = lambda value: value.get_secret_value() if value else None  # noqa: E731
    storage = create_storage(
        settings.storage_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_access_key=secret(settings.s3_access_key),
        s3_secret_key=secret(settings.s3_secret_key),
        s3_region=settings.s3_region,
    )
    _ = timedelta
    return Services(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=create_session_factory(engine),
        storage=storage,
        translator=Translator.load(settings.default_locale),
        users=UserService(clock=clock),
        queue=JobQueue(create_broker(settings.redis_url)),
    )
