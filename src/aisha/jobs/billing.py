"""Billing's recovery sweeps: holds whose time is up, and refunds still awaiting Telegram's answer."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.payments import PaymentService
from aisha.billing.service import LedgerService
from aisha.db.session import unit_of_work
from aisha.jobs.recovery import RecoverySweep


class BillingServices(Protocol):
    """What billing's sweeps take from the container's `Services`."""

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...
    @property
    def ledger(self) -> LedgerService: ...
    @property
    def payments(self) -> PaymentService: ...
    @property
    def recovery(self) -> RecoverySweep: ...


def register(services: BillingServices) -> None:
    """`billing.expired_holds` always; `billing.refunds` when Telegram can be asked for refunds."""

    async def expire_holds() -> int:
        async with unit_of_work(services.sessions) as session:
            return len(await services.ledger.expire_holds(session=session))

    services.recovery.register("billing.expired_holds", expire_holds)
    if services.payments.refunds_enabled:
        services.recovery.register("billing.refunds", services.payments.sweep_refunds)
