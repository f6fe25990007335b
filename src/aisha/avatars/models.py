"""Personal avatars (a FLUX LoRA trained on FAL) and the photos they are trained on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, Timestamps, UUIDPrimaryKey, str_enum, utcnow
from aisha.storage.public import PublicRoute

# Keys of `Avatar.training_config` that record our copy of the trained files (made when training
# ends, so the avatar outlives FAL's media expiry): storage keys, or LORA_LOST when FAL's file
# was gone before a copy could be made.
LORA_KEY, CONFIG_KEY, LORA_LOST = "lora_key", "config_key", "lora_lost"
# The key of `Avatar.training_config` that, while the wizard collects photos, keeps its one live
# status message: its id, what it shows, the photos refused and who may edit it now (see
# AvatarPhotos.refresh_upload_status). Training replaces the whole dict with what FAL was sent.
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


# ----------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AvatarRules:
    min_photos: int = 10
    max_photos: int = 20
    training_timeout: timedelta = timedelta(hours=3)
    poll_after: timedelta = timedelta(minutes=15)
    photo_retention: timedelta = timedelta(0)
    draft_ttl: timedelta = timedelta(hours=24)
    duplicate_max_distance: int = 10
    # How FAL gets the training archive (see storage/public.py).
    archive_route: PublicRoute = PublicRoute.PROVIDER_UPLOAD

    @property
    def archive_ttl(self) -> timedelta:
        """How long the archive's link (or FAL's copy) lives: the training's whole time limit, in
        which FAL may queue it and fetch it late, plus an hour; not longer (the archive is faces)."""
        return self.training_timeout + timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class TrainingOutput:
    """A finished training's files on the provider's CDN."""

    lora_url: str
    config_url: str | None


@dataclass(frozen=True, slots=True)
class PhotoOutcome:
    accepted: bool
    accepted_count: int
    reason: str | None = None  # a RejectReason value, or "limit"


@dataclass(frozen=True, slots=True)
class Review:
    avatar_id: uuid.UUID
    name: str
    type: AvatarType
    accepted: int
    price: int
    balance: int


@dataclass(frozen=True, slots=True)
class AvatarView:
    id: uuid.UUID
    name: str
    type: AvatarType
    status: AvatarStatus
    is_main: bool
    photos: int  # photos still stored
    queue_position: int | None  # among avatars waiting to be sent or trained


@dataclass(frozen=True, slots=True)
class UploadStatus:
    """What the wizard's status message shows."""

    name: str
    type: AvatarType
    accepted: int
    refused: list[tuple[int, str | None, str]]  # (upload number, file name, RejectReason value or "limit")
    refused_count: int  # all refused so far; `refused` keeps the latest
    collecting: bool  # still a draft: more photos may come, and review is offered


@dataclass(frozen=True, slots=True)
class DraftDiscarded:
    """A discarded draft; `status_message`: its status message, whose button is still to go."""

    status_message: int | None
    name: str = ""
