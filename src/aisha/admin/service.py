"""The operator's rules: statistics, finding a user, credits by hand, blocking, broadcasts.

Plain Python over the database, the ledger and the Messenger; the bot's /admin commands and the
`aisha admin` CLI are thin adapters over it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.admin.models import Broadcast, BroadcastStatus
from aisha.avatars.models import Avatar, AvatarStatus
from aisha.billing.errors import InsufficientCredits
from aisha.billing.models import CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.billing.service import EntryResult, LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.models import ImageGeneration
from aisha.messaging import Messenger
from aisha.transcription.models import Transcript
from aisha.users.models import User

log = structlog.get_logger(__name__)
ADJUST_DESCRIPTION = "ledger.admin_adjustment"
MAX_REASON_LENGTH = 200
# Far above any real correction: a bigger number is a typo (an extra zero or two), not an intent.
MAX_ADJUST_AMOUNT = 1_000_000
BROADCAST_JOB = "admin.broadcast"


class AdminError(Exception):
    """A refused admin operation; `key` names the locale text that explains it."""

    key = "admin.error.generic"
    params: ClassVar[dict[str, Any]] = {}  # the text's placeholders


class UserNotFound(AdminError):
    key = "admin.error.user_not_found"


class ReasonRequired(AdminError):
    key = "admin.error.reason_required"


class ReasonTooLong(AdminError):
    key = "admin.error.reason_too_long"
    params: ClassVar[dict[str, Any]] = {"max": MAX_REASON_LENGTH}


class BadAmount(AdminError):
    key = "admin.error.bad_amount"


class AmountTooLarge(AdminError):
    key = "admin.error.amount_too_large"
    params: ClassVar[dict[str, Any]] = {"max": MAX_ADJUST_AMOUNT}


class CannotBlockAdmin(AdminError):
    key = "admin.error.cannot_block_admin"


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
class FeatureStats:
    name: str
    succeeded: int
    in_flight: int
    failed: int
    credits_captured: int
    provider_cost_micro_usd: int
    margin_micro_usd: int


@dataclass(frozen=True)
class Stats:
    users_total: int
    active_today: int
    active_week: int
    blocked: int
    topups: int
    spend: int
    features: list[FeatureStats]


@dataclass(frozen=True)
class UserCard:
    telegram_id: int
    username: str | None
    first_name: str | None
    language: str
    is_blocked: bool
    created_at: datetime
    last_seen_at: datetime
    balance: int
    held: int


@dataclass(frozen=True)
class BroadcastInfo:
    id: uuid.UUID
    status: BroadcastStatus
    sent: int
    failed: int


@dataclass(frozen=True)
class AdminRules:
    admin_ids: frozenset[int]
    broadcast_rate: float = 25.0  # messages per second, over all recipients
    broadcast_lease: timedelta = timedelta(seconds=60)
    credit_value_micro_usd: int = 10_000  # what one credit is worth, for the margin


Enqueue = Callable[[uuid.UUID], Awaitable[None]]
_IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
_AVATAR_IN_FLIGHT = (
    AvatarStatus.PENDING,
    AvatarStatus.SUBMITTING,
    AvatarStatus.SUBMITTED,
    AvatarStatus.TRAINING,
)


class AdminService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        ledger: LedgerService,
        messenger: Messenger | None,
        rules: AdminRules,
        enqueue: Enqueue | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._ledger = ledger
        self._messenger = messenger
        self._rules = rules
        self._enqueue = enqueue

    def is_admin(self, *, user_id: int | None) -> bool:
        return user_id is not None and user_id in self._rules.admin_ids

    # Statistics

    async def stats(self, *, session: AsyncSession) -> Stats:
        now = self._clock.now()

        async def scalar(statement: Any) -> int:
            return int(await session.scalar(statement) or 0)

        users_total = await scalar(select(func.count()).select_from(User))
        active_today = await scalar(
            select(func.count()).select_from(User).where(User.last_seen_at >= now - timedelta(days=1))
        )
        active_week = await scalar(
            select(func.count()).select_from(User).where(User.last_seen_at >= now - timedelta(days=7))
        )
        blocked = await scalar(select(func.count()).select_from(User).where(User.is_blocked.is_(True)))
        topups = await scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(CreditEntry.kind == EntryKind.TOPUP)
        )
        charges = await scalar(
            select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(CreditEntry.kind == EntryKind.CHARGE)
        )
        captured = await scalar(
            select(func.coalesce(func.sum(CreditHold.captured_amount), 0)).where(
                CreditHold.status == HoldStatus.CAPTURED
            )
        )
        features = [
            await self._feature(
                session, "avatars", Avatar, AvatarStatus.READY, _AVATAR_IN_FLIGHT, AvatarStatus.FAILED
            ),
            await self._feature(
                session, "generation", ImageGeneration, JobStatus.SUCCEEDED, _IN_FLIGHT, JobStatus.FAILED
            ),
            await self._feature(
                session, "transcription", Transcript, JobStatus.SUCCEEDED, _IN_FLIGHT, JobStatus.FAILED
            ),
        ]
        return Stats(
            users_total=users_total,
            active_today=active_today,
            active_week=active_week,
            blocked=blocked,
            topups=topups,
            spend=captured - charges,
            features=features,
        )

    async def _feature(
        self,
        session: AsyncSession,
        name: str,
        model: Any,
        succeeded: Any,
        in_flight: Collection[Any],
        failed: Any,
    ) -> FeatureStats:
        counts = dict(
            (status, int(n))
            for status, n in (
                await session.execute(select(model.status, func.count()).group_by(model.status))
            ).all()
        )
        cost = int(
            await session.scalar(
                select(func.coalesce(func.sum(model.provider_cost_micro_usd), 0)).where(
                    model.status == succeeded
                )
            )
            or 0
        )
        credits = int(
            await session.scalar(
                select(func.coalesce(func.sum(CreditHold.captured_amount), 0))
                .select_from(model)
                .join(CreditHold, CreditHold.id == model.hold_id)
                .where(model.status == succeeded, CreditHold.status == HoldStatus.CAPTURED)
            )
            or 0
        )
        return FeatureStats(
            name=name,
            succeeded=counts.get(succeeded, 0),
            in_flight=sum(counts.get(s, 0) for s in in_flight),
            failed=counts.get(failed, 0),
            credits_captured=credits,
            provider_cost_micro_usd=cost,
            margin_micro_usd=credits * self._rules.credit_value_micro_usd - cost,
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

    async def check_amount(self, *, session: AsyncSession, user_id: int, text: str, take: bool) -> int:
        """The amount typed in the card's grant/take flow, checked before the reason is asked for:
        parse_amount's rules and, for a take, not above the balance now (adjust_credits checks
        again, as the balance may move before the confirmation)."""
        amount = parse_amount(text)
        if take:
            balance = await self._ledger.get_balance(session=session, user_id=user_id)
            if amount > balance:
                raise InsufficientCredits(balance=balance, required=amount)
        return amount

    async def adjust_credits(
        self, *, session: AsyncSession, user_id: int, amount: int, reason: str, key: str, admin_id: int | None
    ) -> EntryResult:
        """Grant (amount > 0) or take (amount < 0) credits through the ledger, once per `key`.

        Raises UserNotFound, ReasonRequired, ReasonTooLong, AmountTooLarge, and the ledger's
        InvalidAmount and InsufficientCredits (a take below zero)."""
        reason = clean_reason(reason)
        _check_amount(abs(amount))
        if await session.get(User, user_id) is None:
            raise UserNotFound()
        result = await self._ledger.adjust(
            session=session,
            user_id=user_id,
            amount=amount,
            key=f"admin:{key}",
            description=ADJUST_DESCRIPTION,
            description_args={"reason": reason},
            reference=f"admin:{admin_id}" if admin_id is not None else "admin:cli",
        )
        if not result.replayed:
            log.info("admin.credits_adjusted", user_id=user_id, amount=amount, admin_id=admin_id)
        return result

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

    async def claim_blocked_notice(self, *, session: AsyncSession, user_id: int) -> bool:
        """True exactly once per blocking: the caller then tells the user they are blocked."""
        result = await session.execute(
            update(User)
            .where(User.telegram_id == user_id, User.is_blocked.is_(True), User.blocked_notified.is_(False))
            .values(blocked_notified=True)
            .returning(User.telegram_id)
        )
        return result.scalar_one_or_none() is not None

    # Broadcasts

    async def create_broadcast(self, *, session: AsyncSession, text: str, created_by: int) -> uuid.UUID:
        """Store a broadcast; it is sent by the job (enqueued after commit, or found by the sweep)."""
        broadcast = Broadcast(
            id=uuid.uuid4(),
            text=text,
            created_by=created_by,
            status=BroadcastStatus.RUNNING,
            last_user_id=0,
            sent_count=0,
            failed_count=0,
            created_at=self._clock.now(),
        )
        session.add(broadcast)
        await session.flush()
        log.info("admin.broadcast_created", broadcast_id=str(broadcast.id), admin_id=created_by)
        return broadcast.id

    async def stop_broadcasts(self, *, session: AsyncSession) -> int:
        """Stop every running broadcast; the job sees it before its next message."""
        result = await session.execute(
            update(Broadcast)
            .where(Broadcast.status == BroadcastStatus.RUNNING)
            .values(status=BroadcastStatus.STOPPED, finished_at=self._clock.now(), locked_until=None)
            .returning(Broadcast.id)
        )
        return len(result.all())

    async def broadcast_info(self, *, session: AsyncSession, broadcast_id: uuid.UUID) -> BroadcastInfo | None:
        row = await session.get(Broadcast, broadcast_id, populate_existing=True)
        if row is None:
            return None
        return BroadcastInfo(id=row.id, status=row.status, sent=row.sent_count, failed=row.failed_count)

    async def enqueue_broadcast(self, *, broadcast_id: uuid.UUID) -> None:
        if self._enqueue is not None:
            await self._enqueue(broadcast_id)

    async def sweep(self) -> int:
        """Re-drive running broadcasts no job holds (a restart, a lost job, one queued by the CLI)."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            ids = list(
                await session.scalars(
                    select(Broadcast.id).where(
                        Broadcast.status == BroadcastStatus.RUNNING,
                        or_(Broadcast.locked_until.is_(None), Broadcast.locked_until < now),
                    )
                )
            )
        for broadcast_id in ids:
            await self.enqueue_broadcast(broadcast_id=broadcast_id)
        return len(ids)

    async def run_broadcast(self, *, broadcast_id: uuid.UUID) -> None:
        """The job: send to every non-blocked user after `last_user_id`, in id order, committing the
        progress after each one; stops when the broadcast is stopped or another job holds it."""
        if self._messenger is None:
            raise RuntimeError("broadcasts are sent by a process with a bot (aisha run or aisha worker)")
        messenger = self._messenger
        if not await self._claim(broadcast_id):
            log.info("broadcast.not_claimed", broadcast_id=str(broadcast_id))
            return
        interval = 1.0 / self._rules.broadcast_rate if self._rules.broadcast_rate > 0 else 0.0
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        while True:
            async with unit_of_work(self._sessions) as session:
                row = await session.get(Broadcast, broadcast_id, populate_existing=True)
                if row is None or row.status is not BroadcastStatus.RUNNING:
                    return
                text, after = row.text, row.last_user_id
                recipient = await session.scalar(
                    select(User.telegram_id)
                    .where(User.telegram_id > after, User.is_blocked.is_(False))
                    .order_by(User.telegram_id)
                    .limit(1)
                )
                if recipient is None:
                    row.status = BroadcastStatus.DONE
                    row.finished_at = self._clock.now()
                    row.locked_until = None
                    log.info("broadcast.done", broadcast_id=str(broadcast_id), sent=row.sent_count)
                    return
            delay = next_send - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send = max(next_send, loop.time()) + interval
            sent = True
            try:
                await messenger.send_text(recipient, text)
            except Exception as error:  # a user who blocked the bot, a deleted chat: go on
                sent = False
                log.warning("broadcast.send_failed", user_id=recipient, error=type(error).__name__)
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(Broadcast)
                    .where(Broadcast.id == broadcast_id)
                    .values(
                        last_user_id=recipient,
                        sent_count=Broadcast.sent_count + (1 if sent else 0),
                        failed_count=Broadcast.failed_count + (0 if sent else 1),
                        locked_until=self._clock.now() + self._rules.broadcast_lease,
                    )
                )

    async def _claim(self, broadcast_id: uuid.UUID) -> bool:
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            result = await session.execute(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id,
                    Broadcast.status == BroadcastStatus.RUNNING,
                    or_(Broadcast.locked_until.is_(None), Broadcast.locked_until < now),
                )
                .values(locked_until=now + self._rules.broadcast_lease)
                .returning(Broadcast.id)
            )
            return result.scalar_one_or_none() is not None
