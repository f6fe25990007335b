"""Credits: the ledger (balances, holds, entries), prices, and Telegram Stars payments."""

from aisha.billing.errors import (
    AlreadyRefunded,
    BillingError,
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidPayment,
    PaymentError,
    PaymentNotFound,
)
from aisha.billing.models import EntryKind, HoldStatus, PaymentStatus
from aisha.billing.payments import (
    PaymentService,
    parse_payload,
    payment_key,
    refund_key,
)
from aisha.billing.prices import PriceList, ProviderCosts, StarPackage, billable_minutes, load_prices
from aisha.billing.results import InvoicePayload, PaymentResult, RefundResult
from aisha.billing.service import (
    AccountMismatch,
    EntryResult,
    HistoryItem,
    HistoryPage,
    HoldInfo,
    HoldResult,
    LedgerService,
    ResolutionResult,
)

__all__ = [
    "AccountMismatch",
    "AlreadyRefunded",
    "BillingError",
    "EntryKind",
    "EntryResult",
    "HistoryItem",
    "HistoryPage",
    "HoldAlreadyResolved",
    "HoldInfo",
    "HoldNotFound",
    "HoldResult",
    "HoldStatus",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidPayment",
    "InvoicePayload",
    "LedgerService",
    "PaymentError",
    "PaymentNotFound",
    "PaymentResult",
    "PaymentService",
    "PaymentStatus",
    "PriceList",
    "ProviderCosts",
    "RefundResult",
    "ResolutionResult",
    "StarPackage",
    "billable_minutes",
    "load_prices",
    "parse_payload",
    "payment_key",
    "refund_key",
]
