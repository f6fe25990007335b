"""Who answers support (the operators in ADMIN_IDS) and what they see about the person writing.

The conversation itself lives in the two Telegram chats: the bot copies each message across as
it was sent, so nothing of it is stored here. What an operator needs to act on a payment dispute
is read fresh for every message: the account, the recent Stars payments with Telegram's charge
ids (what /refund takes) and the credits held for jobs in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.models import Payment, PaymentStatus
from aisha.billing.service import HoldInfo, LedgerService
from aisha.users.models import User

RECENT_PAYMENTS = 5


@dataclass(frozen=True, slots=True)
class PaymentLine:
    charge_id: str  # telegram_payment_charge_id
    stars: int
    credits: int
    status: PaymentStatus
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SupportCard:
    telegram_id: int
    first_name: str | None
    last_name: str | None
    username: str | None
    language: str
    balance: int
    held: int
    payments: tuple[PaymentLine, ...]  # newest first, at most RECENT_PAYMENTS
    holds: tuple[HoldInfo, ...]  # the active ones, oldest first


@dataclass(frozen=True, slots=True)
class Operator:
    telegram_id: int
    language: str | None  # None: they never wrote to the bot, their language is unknown


class SupportService:
    def __init__(self, *, ledger: LedgerService, operator_ids: frozenset[int]) -> None:
        self._ledger = ledger
        self._operator_ids = operator_ids

    @property
    def available(self) -> bool:
        """False with no ADMIN_IDS: nobody would read what the user writes."""
        return bool(self._operator_ids)

    def is_operator(self, *, user_id: int | None) -> bool:
        return user_id is not None and user_id in self._operator_ids

    async def operators(self, *, session: AsyncSession) -> list[Operator]:
        """Every operator, in id order, with the language they use the bot in."""
        ids = sorted(self._operator_ids)
        rows = await session.execute(select(User.telegram_id, User.language).where(User.telegram_id.in_(ids)))
        languages: dict[int, str] = {row.telegram_id: row.language for row in rows}
        return [Operator(telegram_id=i, language=languages.get(i)) for i in ids]

    async def card(self, *, session: AsyncSession, user_id: int) -> SupportCard | None:
        """The user as an operator answering them needs to see them; None for an unknown user."""
        user = await session.get(User, user_id, populate_existing=True)
        if user is None:
            return None
        payments = await session.scalars(
            select(Payment)
            .where(Payment.user_id == user_id)
            .order_by(Payment.created_at.desc(), Payment.id)
            .limit(RECENT_PAYMENTS)
        )
        holds = await self._ledger.active_holds(session=session, user_id=user_id)
        return SupportCard(
            telegram_id=user.telegram_id,
            first_name=user.first_name,
            last_name=user.last_name,
            username=user.username,
            language=user.language,
            balance=await self._ledger.get_balance(session=session, user_id=user_id),
            held=sum(hold.amount for hold in holds),
            payments=tuple(
                PaymentLine(
                    charge_id=p.telegram_payment_charge_id,
                    stars=p.amount,
                    credits=p.credits,
                    status=p.status,
                    created_at=p.created_at,
                )
                for p in payments
            ),
            holds=tuple(holds),
        )
