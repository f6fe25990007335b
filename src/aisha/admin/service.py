"""The operator's rules: statistics, finding a user, credits by hand, blocking, broadcasts.

Plain Python over the database, the ledger and the Messenger; the bot's /admin commands and the
`aisha admin` CLI are thin adapters over it. Every input an operator types (an amount, a reason,
a broadcast's text) is checked here, once, and refused with a typed error from `admin.errors`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.admin.broadcasts import BroadcastRules, Broadcasts
from aisha.admin.errors import (
    MAX_ADJUST_AMOUNT,
    MAX_REASON_LENGTH,
    AdminError,
    AmountTooLarge,
    BadAmount,
    CannotBlockAdmin,
    ReasonRequired,
    ReasonTooLong,
    TakeRefused,
    UserNotFound,
)
from aisha.admin.models import BroadcastInfo, Stats, UserCard
from aisha.admin.ports import BroadcastQueue, Messenger
from aisha.admin.stats import collect_stats
from aisha.billing.errors import InsufficientCredits
from aisha.billing.service import EntryResult, LedgerService
from aisha.clock import Clock
from aisha.users.models import User

__all__ = [
    "MAX_ADJUST_AMOUNT",
    "MAX_REASON_LENGTH",
    "AdminError",
    "AdminRules",
    "AdminService",
    "TakeRefused",
    "UserNotFound",
    "clean_reason",
    "parse_amount",
]

log = structlog.get_logger(__name__)
ADJUST_DESCRIPTION = "ledger.admin_adjustment"


def parse_amount(text: str) -> int:
    """An amount as an operator types it: plain digits (no sign, exponent or separators), from 1
    to MAX_ADJUST_AMOUNT. Raises BadAmount or AmountTooLarge."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise BadAmount()
    amount = int(text)
    _check_amount(amount)
    return amount


def _check_amount(amount: int) -> None:
    if amount > MAX_ADJUST_AMOUNT:
        raise AmountTooLarge()


def clean_reason(text: str) -> str:
    """The reason as recorded: whitespace collapsed, required, at most MAX_REASON_LENGTH long.
    Raises ReasonRequired or ReasonTooLong."""
    reason = " ".join(text.split())
    if not reason:
        raise ReasonRequired()
    if len(reason) > MAX_REASON_LENGTH:
        raise ReasonTooLong()
    return reason


@dataclass(frozen=True)
class AdminRules:
    admin_ids: frozenset[int]
    broadcast_rate: float = 25.0  # messages per second, over all recipients
    broadcast_lease: timedelta = timedelta(seconds=60)
    credit_value_micro_usd: int = 10_000  # what one credit is worth, for the margin


@dataclass(frozen=True)
class Adjustment:
    user_id: int
    amount: int  # as typed: above zero for a grant and for a take
    balance: int
    replayed: bool


class AdminService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        ledger: LedgerService,
        messenger: Messenger | None,
        rules: AdminRules,
        enqueue: BroadcastQueue | None = None,
    ) -> None:
        self._clock = clock
        self._ledger = ledger
        self._rules = rules
        self.broadcasts = Broadcasts(
            sessions=sessions,
            clock=clock,
            messenger=messenger,
            rules=BroadcastRules(rate=rules.broadcast_rate, lease=rules.broadcast_lease),
            enqueue=enqueue,
        )

    def is_admin(self, *, user_id: int | None) -> bool:
        return user_id is not None and user_id in self._rules.admin_ids

    async def stats(self, *, session: AsyncSession) -> Stats:
        return await collect_stats(
            session, now=self._clock.now(), credit_value_micro_usd=self._rules.credit_value_micro_usd
        )

    # Users

    async def find_user(self, *, session: AsyncSession, query: str) -> UserCard | None:
        """By Telegram id or @username (case-insensitive)."""
        query = query.strip()
        user: User | None = None
        if query.lstrip("-").isdigit():
            user = await session.get(User, int(query), populate_existing=True)
        elif query:
            name = query.removeprefix("@").lower()
            user = await session.scalar(
                select(User)
                .where(func.lower(User.username) == name)
                .order_by(User.last_seen_at.desc())
                .limit(1)
            )
        if user is None:
            return None
        return UserCard(
            telegram_id=user.telegram_id,
            username=user.username,
            first_name=user.first_name,
            language=user.language,
            is_blocked=user.is_blocked,
            created_at=user.created_at,
            last_seen_at=user.last_seen_at,
            balance=await self._ledger.get_balance(session=session, user_id=user.telegram_id),
            held=await self._ledger.held_total(session=session, user_id=user.telegram_id),
        )

    async def user(self, *, session: AsyncSession, query: str) -> UserCard:
        """`find_user`, raising UserNotFound instead of answering None."""
        card = await self.find_user(session=session, query=query)
        if card is None:
            raise UserNotFound()
        return card

    # Credits by hand

    async def check_amount(self, *, session: AsyncSession, user_id: int, text: str, take: bool) -> int:
        """The amount typed in the card's grant/take flow, checked before the reason is asked for:
        parse_amount's rules and, for a take, not above the balance now (adjust_credits checks
        again, as the balance may move before the confirmation). Raises TakeRefused."""
        amount = parse_amount(text)
        if take:
            balance = await self._ledger.get_balance(session=session, user_id=user_id)
            if amount > balance:
                raise TakeRefused(user_id=user_id, balance=balance, required=amount)
        return amount

    async def adjust_credits(
        self, *, session: AsyncSession, user_id: int, amount: int, reason: str, key: str, admin_id: int | None
    ) -> EntryResult:
        """Grant (amount > 0) or take (amount < 0) credits through the ledger, once per `key`.

        Raises UserNotFound, ReasonRequired, ReasonTooLong, AmountTooLarge, the ledger's
        InvalidAmount, and TakeRefused (an InsufficientCredits: a take below zero)."""
        reason = clean_reason(reason)
        _check_amount(abs(amount))
        if await session.get(User, user_id) is None:
            raise UserNotFound()
        try:
            result = await self._ledger.adjust(
                session=session,
                user_id=user_id,
                amount=amount,
                key=f"admin:{key}",
                description=ADJUST_DESCRIPTION,
                description_args={"reason": reason},
                reference=f"admin:{admin_id}" if admin_id is not None else "admin:cli",
            )
        except InsufficientCredits as error:
            raise TakeRefused(user_id=user_id, balance=error.balance, required=error.required) from None
        if not result.replayed:
            log.info("admin.credits_adjusted", user_id=user_id, amount=amount, admin_id=admin_id)
        return result

    async def adjust_by_query(
        self,
        *,
        session: AsyncSession,
        query: str,
        amount_text: str,
        take: bool,
        reason: str,
        key: str,
        admin_id: int | None,
    ) -> Adjustment:
        """/grant and /take: the amount as typed (checked first), the user by id or @username."""
        amount = parse_amount(amount_text)
        card = await self.user(session=session, query=query)
        result = await self.adjust_credits(
            session=session,
            user_id=card.telegram_id,
            amount=-amount if take else amount,
            reason=reason,
            key=key,
            admin_id=admin_id,
        )
        return Adjustment(
            user_id=card.telegram_id, amount=amount, balance=result.balance, replayed=result.replayed
        )

    # Blocking

    async def set_blocked(self, *, session: AsyncSession, user_id: int, blocked: bool) -> None:
        """Block or unblock; a blocked user is told once, at their next update."""
        if blocked and self.is_admin(user_id=user_id):
            raise CannotBlockAdmin()
        result = await session.execute(
            update(User)
            .where(User.telegram_id == user_id)
            .values(is_blocked=blocked, blocked_notified=False)
            .returning(User.telegram_id)
        )
        if result.scalar_one_or_none() is None:
            raise UserNotFound()
        log.info("admin.user_blocked" if blocked else "admin.user_unblocked", user_id=user_id)

    async def block(self, *, session: AsyncSession, query: str, blocked: bool) -> UserCard:
        """Block or unblock the user by id or @username; their card as it is now."""
        card = await self.user(session=session, query=query)
        await self.set_blocked(session=session, user_id=card.telegram_id, blocked=blocked)
        return replace(card, is_blocked=blocked)

    async def claim_blocked_notice(self, *, session: AsyncSession, user_id: int) -> bool:
        """True exactly once per blocking: the caller then tells the user they are blocked."""
        result = await session.execute(
            update(User)
            .where(User.telegram_id == user_id, User.is_blocked.is_(True), User.blocked_notified.is_(False))
            .values(blocked_notified=True)
            .returning(User.telegram_id)
        )
        return result.scalar_one_or_none() is not None

    # Broadcasts (see admin.broadcasts)

    async def create_broadcast(self, *, session: AsyncSession, text: str, created_by: int) -> uuid.UUID:
        return await self.broadcasts.create(session=session, text=text, created_by=created_by)

    async def start_broadcast(self, *, session: AsyncSession, text: str, created_by: int) -> uuid.UUID:
        return await self.broadcasts.start(session=session, text=text, created_by=created_by)

    async def stop_broadcasts(self, *, session: AsyncSession) -> int:
        return await self.broadcasts.stop(session=session)

    async def broadcast_info(self, *, session: AsyncSession, broadcast_id: uuid.UUID) -> BroadcastInfo | None:
        return await self.broadcasts.info(session=session, broadcast_id=broadcast_id)

    async def enqueue_broadcast(self, *, broadcast_id: uuid.UUID) -> None:
        await self.broadcasts.enqueue(broadcast_id=broadcast_id)

    async def sweep(self) -> int:
        return await self.broadcasts.sweep()

    async def run_broadcast(self, *, broadcast_id: uuid.UUID) -> None:
        await self.broadcasts.run(broadcast_id=broadcast_id)
