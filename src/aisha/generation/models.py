"""Images generated on an image model, with or without the user's avatar: the row and the values
the feature works with."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from aisha.avatars.models import AvatarType
from aisha.db.base import Base, JobStatus, Timestamps, UUIDPrimaryKey, str_enum
from aisha.generation.errors import GenerationNotFound


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


# --- values ----------------------------------------------------------------------------------

# The aspect ratios we offer (the provider maps each to its own size names).
ASPECT_RATIOS: tuple[str, ...] = ("1:1", "3:4", "4:3", "9:16", "16:9")
JOB_NAME = "generation.run"
FINISH_JOB = "generation.finish"
DEFAULT_RATIO = "3:4"
MAX_IMAGES = 4
IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
AT_PROVIDER = (JobStatus.SUBMITTED, JobStatus.RUNNING)


def storage_prefix(user_id: int, generation_id: uuid.UUID) -> str:
    return f"generations/{user_id}/{generation_id}"


class Source(StrEnum):
    TEXT = "text"  # the user's words
    PHOTO = "photo"  # a reference photo the user sent: vision writes the prompt
    LIKE = "like"  # one of our generated images: vision writes the prompt
    REGENERATE = "regenerate"  # an earlier generation's prompt again, new seed
    FREE = "free"  # a free regeneration after the quality check found a defect

    @property
    def needs_vision(self) -> bool:
        return self in (Source.PHOTO, Source.LIKE)


@dataclass(frozen=True, slots=True)
class GenerationRules:
    max_in_flight: int = 2
    timeout: timedelta = timedelta(minutes=10)
    poll_after: timedelta = timedelta(minutes=1)
    poll_interval: float = 2.0
    prompt_max_length: int = 1000
    free_regeneration: bool = True
    quality_check: bool = True
    # How long a LoRA URL that answered is trusted without asking the provider's CDN again.
    lora_check_ttl: timedelta = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class AvatarChoice:
    id: uuid.UUID
    name: str
    type: AvatarType


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What the user confirmed. `prompt` for TEXT; `source_*` for the other sources."""

    source: Source
    aspect_ratio: str
    num_images: int
    prompt: str = ""
    avatar_id: uuid.UUID | None = None
    source_file_id: str | None = None  # PHOTO: the Telegram file
    source_generation_id: uuid.UUID | None = None  # LIKE / REGENERATE / FREE
    source_index: int = 0  # LIKE: which delivered image


@dataclass(frozen=True, slots=True)
class DraftBasis:
    """What a new options card starts from: the checked prompt, the settings, the avatar."""

    prompt: str
    ratio: str
    num_images: int
    avatar: AvatarChoice | None


@dataclass(frozen=True, slots=True)
class GalleryCard:
    id: uuid.UUID
    prompt: str
    created_at: datetime
    cost: int
    images: int
    first_key: str
    offset: int
    total: int


@dataclass(frozen=True, slots=True)
class Finished:
    """A settled generation, as the user is told about it."""

    user_id: int
    locale: str
    config: dict[str, Any]
    prompt: str
    captured: int
    returned: int


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    ok: bool
    defects: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "defects": list(self.defects)}


@dataclass(frozen=True, slots=True)
class PromptSubject:
    """The avatar a prompt is generated with."""

    trigger_phrase: str
    type: AvatarType


@dataclass(frozen=True, slots=True)
class EnhancedPrompt:
    text: str
    llm_used: bool  # False: the deterministic layer alone (no charge for enhancement either way)


async def owned_generation(
    session: AsyncSession, generation_id: uuid.UUID, user_id: int, *, lock: bool = False
) -> ImageGeneration:
    """Ownership is checked here, whatever the callback data said."""
    query = select(ImageGeneration).where(
        ImageGeneration.id == generation_id, ImageGeneration.user_id == user_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    row: ImageGeneration | None = await session.scalar(query)
    if row is None:
        raise GenerationNotFound(str(generation_id))
    return row
