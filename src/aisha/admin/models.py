"""The broadcasts table and what the admin service answers with (plain frozen views)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, UUIDPrimaryKey, str_enum, utcnow


class BroadcastStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DONE = "done"


class Broadcast(UUIDPrimaryKey, Base):
    """A message to every non-blocked user, sent in ascending Telegram id order.

    `last_user_id` is the progress: it is committed after every recipient, so a job started again
    (after a restart or by the recovery sweep) goes on after it and sends no one the text twice.
    `locked_until` is the lease of the one job sending it.
    """

    __tablename__ = "broadcasts"
    __table_args__ = (Index(None, "status", "locked_until"),)

    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int]
    status: Mapped[BroadcastStatus] = mapped_column(
        str_enum(BroadcastStatus), default=BroadcastStatus.RUNNING
    )
    last_user_id: Mapped[int] = mapped_column(default=0)
    sent_count: Mapped[int] = mapped_column(default=0)
    failed_count: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


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
    # Stars refunds Telegram never answered, asked as often as allowed: the operator's to ask again
    # with /refund; the charge ids of the oldest few.
    refunds_waiting: int = 0
    waiting_refund_charges: tuple[str, ...] = ()


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
