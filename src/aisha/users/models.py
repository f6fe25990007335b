from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, utcnow


class User(Base):
    """A Telegram user, keyed by their Telegram id."""

    __tablename__ = "users"

    telegram_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str | None] = mapped_column(String(256))
    last_name: Mapped[str | None] = mapped_column(String(256))
    # The interface language (ru/en) and what Telegram reported on first contact.
    language: Mapped[str] = mapped_column(String(8))
    telegram_language_code: Mapped[str | None] = mapped_column(String(16))
    # Transcription language: None means automatic detection.
    transcription_language: Mapped[str | None] = mapped_column(String(8))
    is_blocked: Mapped[bool] = mapped_column(default=False)
    # A blocked user is told once; the next updates get no answer at all.
    blocked_notified: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
