from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, UUIDPrimaryKey, utcnow

MAX_KEY_LENGTH = 200


class OwedMessage(UUIDPrimaryKey, Base):
    """A message the bot owes someone, written in the same transaction as what it tells.

    Sent after that transaction commits; a failed send is retried by the recovery sweep until
    `sent_at` (delivered) or `given_up_at` (the chat can't be reached, or too many attempts).
    `next_attempt_at` is also the lease of the one attempt under way, so two processes never
    send it at once.
    """

    __tablename__ = "owed_messages"
    __table_args__ = (Index(None, "sent_at", "given_up_at", "next_attempt_at"),)

    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), unique=True)  # owed once per key
    chat_id: Mapped[int]
    text: Mapped[str] = mapped_column(Text)  # rendered in the reader's language when owed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    given_up_at: Mapped[datetime | None]
