"""Personal avatars (a FLUX LoRA trained on FAL) and the photos they are trained on."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, Timestamps, UUIDPrimaryKey, str_enum, utcnow

# Keys of `Avatar.training_config` that record our copy of the trained files (made when training
# ends, so the avatar outlives FAL's media expiry): storage keys, or LORA_LOST when FAL's file
# was gone before a copy could be made.
LORA_KEY, CONFIG_KEY, LORA_LOST = "lora_key", "config_key", "lora_lost"
# The key of `Avatar.training_config` that, while the wizard collects photos, keeps its one live
# status message: its id, what it shows, the photos refused and who may edit it now (see
# AvatarService.refresh_upload_status). Training replaces the whole dict with what FAL was sent.
UPLOAD_KEY = "upload"


class AvatarType(StrEnum):
    PORTRAIT = "portrait"
    STYLE = "style"


class AvatarStatus(StrEnum):
    DRAFT = "draft"  # the wizard is collecting photos
    PENDING = "pending"  # confirmed, not yet sent to FAL (held already if a try failed before FAL)
    # Held and about to be (or being) sent to FAL; whether FAL took it is not known yet. Never
    # submitted again: FAL's webhook, or the training timeout, settles it.
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"  # FAL accepted it into its queue
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"


class Avatar(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "avatars"
    __table_args__ = (Index(None, "user_id", "status"), Index(None, "status", "updated_at"))

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"))
    type: Mapped[AvatarType] = mapped_column(str_enum(AvatarType))
    status: Mapped[AvatarStatus] = mapped_column(str_enum(AvatarStatus), default=AvatarStatus.DRAFT)
    name: Mapped[str] = mapped_column(String(64))
    trigger_phrase: Mapped[str] = mapped_column(String(64), unique=True)
    is_main: Mapped[bool] = mapped_column(default=False)
    provider_endpoint: Mapped[str | None] = mapped_column(String(128))
    provider_request_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    lora_url: Mapped[str | None] = mapped_column(Text)
    config_url: Mapped[str | None] = mapped_column(Text)
    # What was sent to the trainer, and where our copy of the result is kept (LORA_KEY...).
    training_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_holds.id", ondelete="SET NULL"))
    price: Mapped[int] = mapped_column(default=0)
    provider_cost_micro_usd: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    photos_deleted_at: Mapped[datetime | None]


class AvatarPhoto(UUIDPrimaryKey, Base):
    __tablename__ = "avatar_photos"
    __table_args__ = (UniqueConstraint("avatar_id", "sha256"),)

    avatar_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("avatars.id", ondelete="CASCADE"), index=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    perceptual_hash: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int]
    width: Mapped[int]
    height: Mapped[int]
    # What validation measured, kept for support and threshold tuning.
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
