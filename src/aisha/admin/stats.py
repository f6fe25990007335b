"""The operator's figures: users and activity, credits topped up and spent, and per feature its
jobs, the credits captured for them, what the provider charged and the margin left."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.admin.models import FeatureStats, Stats
from aisha.avatars.models import Avatar, AvatarStatus
from aisha.billing.models import CreditEntry, CreditHold, EntryKind, HoldStatus, Payment, PaymentStatus
from aisha.db.base import JobStatus
from aisha.generation.models import ImageGeneration
from aisha.transcription.models import Transcript
from aisha.users.models import User

_IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
WAITING_CHARGES_SHOWN = 10  # refunds waiting for the operator, named oldest first; the rest counted

_AVATAR_IN_FLIGHT = (
    AvatarStatus.PENDING,
    AvatarStatus.SUBMITTING,
    AvatarStatus.SUBMITTED,
    AvatarStatus.TRAINING,
)


async def collect_stats(session: AsyncSession, *, now: datetime, credit_value_micro_usd: int) -> Stats:
    async def scalar(statement: Any) -> int:
        return int(await session.scalar(statement) or 0)

    def users_seen_since(delta: timedelta) -> Any:
        return select(func.count()).select_from(User).where(User.last_seen_at >= now - delta)

    def entries_of(kind: EntryKind) -> Any:
        return select(func.coalesce(func.sum(CreditEntry.amount), 0)).where(CreditEntry.kind == kind)

    users_total = await scalar(select(func.count()).select_from(User))
    active_today = await scalar(users_seen_since(timedelta(days=1)))
    active_week = await scalar(users_seen_since(timedelta(days=7)))
    blocked = await scalar(select(func.count()).select_from(User).where(User.is_blocked.is_(True)))
    topups = await scalar(entries_of(EntryKind.TOPUP))
    charges = await scalar(entries_of(EntryKind.CHARGE))
    captured = await scalar(
        select(func.coalesce(func.sum(CreditHold.captured_amount), 0)).where(
            CreditHold.status == HoldStatus.CAPTURED
        )
    )
    given_up = (Payment.status == PaymentStatus.REFUNDING, Payment.refund_given_up_at.is_not(None))
    refunds_waiting = await scalar(select(func.count()).select_from(Payment).where(*given_up))
    waiting_charges = (
        await session.scalars(
            select(Payment.telegram_payment_charge_id)
            .where(*given_up)
            .order_by(Payment.refund_given_up_at, Payment.id)
            .limit(WAITING_CHARGES_SHOWN)
        )
        if refunds_waiting
        else ()
    )
    value = credit_value_micro_usd
    features = [
        await _feature(
            session, "avatars", Avatar, AvatarStatus.READY, _AVATAR_IN_FLIGHT, AvatarStatus.FAILED, value
        ),
        await _feature(
            session, "generation", ImageGeneration, JobStatus.SUCCEEDED, _IN_FLIGHT, JobStatus.FAILED, value
        ),
        await _feature(
            session, "transcription", Transcript, JobStatus.SUCCEEDED, _IN_FLIGHT, JobStatus.FAILED, value
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
        refunds_waiting=refunds_waiting,
        waiting_refund_charges=tuple(waiting_charges),
    )


async def _feature(
    session: AsyncSession,
    name: str,
    model: Any,
    succeeded: Any,
    in_flight: Collection[Any],
    failed: Any,
    credit_value_micro_usd: int,
) -> FeatureStats:
    counts = dict(
        (status, int(n))
        for status, n in (
            await session.execute(select(model.status, func.count()).group_by(model.status))
        ).all()
    )
    cost = int(
        await session.scalar(
            select(func.coalesce(func.sum(model.provider_cost_micro_usd), 0)).where(model.status == succeeded)
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
        margin_micro_usd=credits * credit_value_micro_usd - cost,
    )
