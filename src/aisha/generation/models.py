"""Images generated on FAL, with or without the user's avatar."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, JobStatus, Timestamps, UUIDPrimaryKey, str_enum


class ImageGeneration(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "image_generations"
    __table_args__ = (Index(None, "user_id", "created_at"), Index(None, "status", "updated_at"))

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"))
    avatar_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("avatars.id", ondelete="SET NULL"))
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus), default=JobStatus.PENDING)
    prompt: Mapped[str] = mapped_column(Text)
    enhanced_prompt: Mapped[str | None] = mapped_column(Text)
    # Aspect ratio, number of images, seed, steps, guidance: what was asked of the provider.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Storage keys of the delivered images, with their seeds.
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    provider_endpoint: Mapped[str | None] = mapped_column(String(128))
    provider_request_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_holds.id", ondelete="SET NULL"))
    price: Mapped[int] = mapped_column(default=0)
    cost: Mapped[int] = mapped_column(default=0)  # what was actually captured
    provider_cost_micro_usd: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]
