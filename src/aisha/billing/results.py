"""What the ledger's operations and queries, and the Stars payments, return."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from aisha.billing.models import CreditEntry, EntryKind, HoldStatus


@dataclass(frozen=True, slots=True)
class EntryResult:
    entry_id: uuid.UUID
    balance: int  # the balance right after this entry (for a replay: after the first call)
    amount: int  # signed
    replayed: bool


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: uuid.UUID
    amount: int
    balance: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class ResolutionResult:
    """A capture, release or expiry: `captured` was spent, `returned` went back to the balance."""

    hold_id: uuid.UUID
    status: HoldStatus
    captured: int
    returned: int
    balance: int
    entry_id: uuid.UUID
    replayed: bool


@dataclass(frozen=True, slots=True)
class HoldInfo:
    id: uuid.UUID
    user_id: int
    amount: int
    captured_amount: int
    status: HoldStatus
    reference: str
    description: str
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryItem:
    id: uuid.UUID
    kind: EntryKind
    amount: int
    balance_after: int
    description: str
    description_args: dict[str, Any]
    reference: str | None
    hold_id: uuid.UUID | None
    created_at: datetime

    @classmethod
    def of(cls, row: Any) -> HistoryItem:
        """One entry from a row selected with HISTORY_COLUMNS."""
        return cls(
            id=row.id,
            kind=row.kind,
            amount=row.amount,
            balance_after=row.balance_after,
            description=row.description,
            description_args=dict(row.description_args or {}),
            reference=row.reference,
            hold_id=row.hold_id,
            created_at=row.created_at,
        )


# What a history line reads of an entry (HistoryItem.of builds one from them).
HISTORY_COLUMNS = (
    CreditEntry.id,
    CreditEntry.kind,
    CreditEntry.amount,
    CreditEntry.balance_after,
    CreditEntry.description,
    CreditEntry.description_args,
    CreditEntry.reference,
    CreditEntry.hold_id,
    CreditEntry.created_at,
)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryItem]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True, slots=True)
class Overview:
    balance: int  # what the user can spend now
    held: int  # reserved by active holds
    page: HistoryPage


@dataclass(frozen=True, slots=True)
class AccountMismatch:
    """An account whose numbers don't add up; `balance` is None when the account row is missing.

    `reasons` say why the balance doesn't match its entries; `problems` name each hold or
    payment of the account that doesn't match its entries, one line each."""

    user_id: int
    balance: int | None
    entries_sum: int
    first_bad_entry_id: uuid.UUID | None
    reasons: tuple[str, ...]
    problems: tuple[str, ...] = ()


# --- Stars payments ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoicePayload:
    package_id: str
    user_id: int
    nonce: str


@dataclass(frozen=True, slots=True)
class PaymentResult:
    credits: int
    balance: int  # right after crediting (for a replay: after the first call)
    replayed: bool


class RefundOutcome(StrEnum):
    REFUNDED = "refunded"  # the Stars are back with the user
    REFUSED = "refused"  # Telegram said no: the payment is paid again and its credits are back
    PENDING = "pending"  # no answer from Telegram: the recovery sweep asks again


@dataclass(frozen=True, slots=True)
class RefundCompletion:
    outcome: RefundOutcome
    reason: str | None = None  # Telegram's words, for a refusal


@dataclass(frozen=True, slots=True)
class RefundedPayment:
    taken: int  # credits taken back now
    shortfall: int  # credits that were already spent
    replayed: bool


@dataclass(frozen=True, slots=True)
class RefundResult:
    user_id: int
    stars: int  # what Telegram should give back (refundStarPayment)
    credits: int  # what was taken from the balance
    balance: int
