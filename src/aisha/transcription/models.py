"""Transcripts of voice messages, audio and video."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
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


IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
# The error of a transcript refused for credits: a top-up can resume it (see `refused_for_credits`).
REFUSED_FOR_CREDITS = "insufficient_credits"


@dataclass(frozen=True)
class IncomingMedia:
    """A recording a user sent, as Telegram described it."""

    user_id: int
    chat_id: int
    message_id: int
    file_id: str
    kind: str  # voice, audio, video, video_note, document
    file_name: str | None = None
    file_size: int | None = None


@dataclass(frozen=True)
class RefusedRecording:
    """A recording whose transcription was refused for credits: what it needed, and the file."""

    media: IncomingMedia
    required: int


@dataclass(frozen=True)
class TranscriptionSettings:
    keep_audio: bool = False
    model: str = "whisper-1"
    # A running job that hasn't reported progress for this long is taken to be lost.
    stale_after: timedelta = timedelta(minutes=30)
    max_in_flight: int = 2  # per user
