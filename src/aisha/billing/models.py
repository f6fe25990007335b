"""The credit ledger: an account balance and immutable entries, two-phase holds, payments."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from aisha.db.base import Base, UUIDPrimaryKey, str_enum, utcnow


class EntryKind(StrEnum):
    BONUS = "bonus"
    TOPUP = "topup"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    CHARGE = "charge"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class HoldStatus(StrEnum):
    ACTIVE = "active"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class PaymentStatus(StrEnum):
    PAID = "paid"
    # The credits are taken back and Telegram's refundStarPayment is owed (or its answer awaited):
    # the recovery sweep drives it to REFUNDED, or back to PAID when Telegram refuses.
    REFUNDING = "refunding"
    REFUNDED = "refunded"


class CreditAccount(Base):
    """One per user. `balance` is what the user can spend now; held credits are already out of it."""

    __tablename__ = "credit_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.telegram_id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    balance: Mapped[int] = mapped_column(default=0)
    # The `seq` of the account's newest entry: bumped by the same UPDATE that moves the balance
    # (under the row lock), so entries are numbered in the order they were applied, whatever
    # the clocks say. Never reset (not even when /delete_me erases the entries): never reused.
    last_seq: Mapped[int] = mapped_column(default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CreditHold(UUIDPrimaryKey, Base):
    """A reservation for one job; resolves exactly once (captured, released or expired)."""

    __tablename__ = "credit_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("captured_amount >= 0 AND captured_amount <= amount", name="captured_within_amount"),
        Index(None, "status", "expires_at"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"), index=True)
    amount: Mapped[int]
    captured_amount: Mapped[int] = mapped_column(default=0)
    status: Mapped[HoldStatus] = mapped_column(str_enum(HoldStatus), default=HoldStatus.ACTIVE)
    reference: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]


class CreditEntry(UUIDPrimaryKey, Base):
    """An immutable ledger line. The account balance always equals the sum of its entries."""

    __tablename__ = "credit_entries"
    __table_args__ = (
        Index(None, "user_id", "created_at"),
        UniqueConstraint("user_id", "seq"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"))
    kind: Mapped[EntryKind] = mapped_column(str_enum(EntryKind))
    # Signed: positive adds to the balance, negative takes from it.
    amount: Mapped[int]
    balance_after: Mapped[int]
    # 1, 2, 3... per user: the account's `last_seq` after this entry. The ledger's order.
    seq: Mapped[int]
    hold_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_holds.id", ondelete="SET NULL"))
    # What the entry is for, e.g. "generation:<uuid>" or "payment:<charge id>".
    reference: Mapped[str | None] = mapped_column(String(128))
    # A locale key plus arguments, so the history reads in the user's current language.
    description: Mapped[str] = mapped_column(String(64))
    description_args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payment(UUIDPrimaryKey, Base):
    """A Telegram Stars payment; the charge id is Telegram's and unique."""

    __tablename__ = "payments"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.telegram_id", ondelete="CASCADE"), index=True)
    telegram_payment_charge_id: Mapped[str] = mapped_column(String(256), unique=True)
    provider_payment_charge_id: Mapped[str | None] = mapped_column(String(256))
    currency: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int]  # in the currency's smallest unit: Stars for XTR
    credits: Mapped[int]
    package_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(String(128))
    status: Mapped[PaymentStatus] = mapped_column(str_enum(PaymentStatus), default=PaymentStatus.PAID)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    refunded_at: Mapped[datetime | None]  # when the refund started (REFUNDING) or ended (REFUNDED)
    # Refunds started, counting those Telegram refused: each has its own ledger keys.
    refund_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # Credits a refund made outside the bot couldn't take back: already spent when it came.
    refund_shortfall: Mapped[int] = mapped_column(default=0, server_default="0")
    # refundStarPayment calls of the open refund that got no answer; after the last one allowed
    # the sweep stops asking, and the refund waits for the operator since `refund_given_up_at`.
    refund_asks: Mapped[int] = mapped_column(default=0, server_default="0")
    refund_given_up_at: Mapped[datetime | None]


class AnonymizedLedgerTotal(Base):
    """What the ledger of deleted users added up to, per entry kind, under no user id.

    /delete_me adds the user's per-kind sums here before their entries are deleted, so the
    operator's totals (top-ups, spend, refunds) stay right without keeping anything personal.
    """

    __tablename__ = "anonymized_ledger_totals"

    kind: Mapped[EntryKind] = mapped_column(str_enum(EntryKind), primary_key=True)
    entries: Mapped[int] = mapped_column(default=0)
    amount: Mapped[int] = mapped_column(default=0)  # signed, like the entries it sums
    users: Mapped[int] = mapped_column(default=0)  # deleted users who had entries of this kind
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
