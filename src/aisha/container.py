"""The one place that wires everything: settings in, the set of services out.

The bot, the HTTP app and the workers all receive the same `Services`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aisha.billing.payments import PaymentService
from aisha.billing.prices import PriceList, load_prices
from aisha.billing.service import LedgerService
from aisha.clock import Clock, SystemClock
from aisha.config import Settings
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.i18n import Translator
from aisha.jobs.queue import JobQueue, create_broker
from aisha.jobs.recovery import RecoverySweep
from aisha.messaging import Messenger
from aisha.storage import ObjectStorage, create_storage
from aisha.storage.links import LinkSigner, link_secret
from aisha.users.service import UserService


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

    async def aclose(self) -> None:
        await self.storage.aclose()
        await self.engine.dispose()


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def build_services(settings: Settings, *, messenger: Messenger, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url)
    sessions = create_session_factory(engine)
    prices = load_prices(settings.prices_file)
    # Signed links to local files exist only where FAL can reach us: webhook mode.
    signer = None
    if settings.public_base_url and settings.bot_token:
        signer = LinkSigner(link_secret(settings.bot_token.get_secret_value()), settings.public_base_url)
    ledger = LedgerService(clock=clock, hold_ttl=timedelta(seconds=settings.hold_ttl_seconds))
    services = Services(
        settings=settings,
        clock=clock,
        engine=engine,
        sessions=sessions,
        storage=create_storage(
            settings.storage_url,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_access_key=_secret(settings.s3_access_key),
            s3_secret_key=_secret(settings.s3_secret_key),
            s3_region=settings.s3_region,
            url_signer=signer.sign if signer else None,
        ),
        translator=Translator.load(settings.default_locale),
        prices=prices,
        ledger=ledger,
        payments=PaymentService(ledger=ledger, prices=prices),
        users=UserService(clock=clock, ledger=ledger, welcome_bonus=settings.welcome_bonus),
        queue=JobQueue(create_broker(settings.redis_url)),
        messenger=messenger,
        link_signer=signer,
    )
    services.recovery.register("billing.expired_holds", lambda: _expire_holds(services))
    return services


async def _expire_holds(services: Services) -> int:
    async with unit_of_work(services.sessions) as session:
        return len(await services.ledger.expire_holds(session=session))
