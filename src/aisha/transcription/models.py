"""Transcripts of voice messages, audio and video."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, JobStatus, Timestamps, UUIDPrimaryKey, str_enum


class Transcript(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "transcripts"
    __table_args__ = (Index(None, "user_id", "created_at"), Index(None, "status", "updated_at"))

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus), default=JobStatus.PENDING)
    # Bumped by each run of the job that takes the row; its writes are conditional on it.
    claim: Mapped[int] = mapped_column(default=0, server_default="0")
    source_kind: Mapped[str] = mapped_column(String(16))  # voice, audio, video, video_note, document
    file_name: Mapped[str | None] = mapped_column(String(256))
    audio_key: Mapped[str | None] = mapped_column(String(512))
    duration_ms: Mapped[int] = mapped_column(default=0)
    language: Mapped[str | None] = mapped_column(String(8))
    model: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str | None] = mapped_column(Text)
    text_key: Mapped[str | None] = mapped_column(String(512))
    srt_key: Mapped[str | None] = mapped_column(String(512))
    # Chat and status message to edit with progress, chunk counts, and similar bookkeeping.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_holds.id", ondelete="SET NULL"))
    price: Mapped[int] = mapped_column(default=0)
    provider_cost_micro_usd: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None]
