"""Every table of the product in one metadata, for Alembic and for tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Mapped, mapped_column

from aisha.avatars.models import Avatar, AvatarPhoto
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, Payment
from aisha.db.base import Base, utcnow
from aisha.generation.models import ImageGeneration
from aisha.transcription.models import Transcript
from aisha.users.models import User


class ProcessedUpdate(Base):
    """Telegram update ids already handled, so a repeated delivery is dropped."""

    __tablename__ = "processed_updates"

    update_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


__all__ = [
    "Avatar",
    "AvatarPhoto",
    "Base",
    "CreditAccount",
    "CreditEntry",
    "CreditHold",
    "ImageGeneration",
    "Payment",
    "ProcessedUpdate",
    "Transcript",
    "User",
]
