"""How often Telegram is asked for a refund it doesn't answer: a bounded number of times, like every
other outside call the sweep retries; after the last one the refund waits for the operator, whose
/refund asks again."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import case, literal, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.models import Payment, PaymentStatus
from aisha.db.session import unit_of_work

log = structlog.get_logger(__name__)


async def count_unanswered(
    sessions: async_sessionmaker[AsyncSession], *, row: Any, charge_id: str, now: datetime, max_asks: int
) -> None:
    """One more refundStarPayment of the open refund (`row`, as read before asking) got no answer.
    At `max_asks` the refund is given up: the sweep asks no more and the credits stay taken back
    (nothing moves); the operator sees it in the log and the admin statistics."""
    asks_now = Payment.refund_asks + 1  # SET sees the row as it was: both values use the same count
    async with unit_of_work(sessions) as session:
        counted = (
            await session.execute(
                update(Payment)
                .where(
                    Payment.id == row.id,
                    Payment.status == PaymentStatus.REFUNDING,
                    Payment.refund_attempts == row.refund_attempts,  # still the refund that was asked
                    Payment.refund_given_up_at.is_(None),
                )
                .values(
                    refund_asks=asks_now,
                    refund_given_up_at=case(
                        (asks_now >= max_asks, literal(now, Payment.refund_given_up_at.type)), else_=None
                    ),
                )
                .returning(Payment.refund_asks)
                .execution_options(synchronize_session=False)
            )
        ).scalar_one_or_none()
    if counted is None or counted < max_asks:
        return
    log.error(
        "payment.refund_given_up",
        user_id=row.user_id,
        payment_id=str(row.id),
        charge_id=charge_id,
        asks=counted,
        stars=row.amount,
    )


async def ask_again(session: AsyncSession, *, row: Any) -> bool:
    """The operator's /refund of a refund given up on (`row`, as read): its asks start over, in the
    caller's transaction. False if it isn't given up (the sweep is still asking) or moved on."""
    rearmed = await session.execute(
        update(Payment)
        .where(
            Payment.id == row.id,
            Payment.status == PaymentStatus.REFUNDING,
            Payment.refund_attempts == row.refund_attempts,
            Payment.refund_given_up_at.is_not(None),
        )
        .values(refund_asks=0, refund_given_up_at=None)
        .returning(Payment.id)
        .execution_options(synchronize_session=False)
    )
    return rearmed.first() is not None
