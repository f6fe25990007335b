"""Errors of the credit ledger and of payments; handlers map them to locale texts."""

from __future__ import annotations

import uuid

from aisha.billing.models import HoldStatus


class BillingError(Exception):
    """Base of every billing error."""


class InvalidAmount(BillingError, ValueError):
    """An amount that no operation accepts (zero, negative, larger than the hold...)."""


class InsufficientCredits(BillingError):
    """The balance can't cover the operation; nothing was written."""

    def __init__(self, *, balance: int, required: int) -> None:
        self.balance = balance
        self.required = required
        self.shortfall = max(required - balance, 0)
        super().__init__(f"insufficient credits: balance {balance}, required {required}")


class IdempotencyConflict(BillingError):
    """The key was already used for a different operation (other user, kind or amount)."""

    def __init__(self, *, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"idempotency key {key!r} already used for a different operation: {reason}")


class HoldNotFound(BillingError):
    def __init__(self, hold_id: uuid.UUID) -> None:
        self.hold_id = hold_id
        super().__init__(f"hold {hold_id} not found")


class HoldAlreadyResolved(BillingError):
    """The hold was captured, released or expired before, under another idempotency key."""

    def __init__(self, *, hold_id: uuid.UUID, status: HoldStatus) -> None:
        self.hold_id = hold_id
        self.status = status
        super().__init__(f"hold {hold_id} is already {status.value}")


class PaymentError(BillingError):
    """Base of the payment errors."""


class PaymentNotFound(PaymentError):
    def __init__(self, telegram_payment_charge_id: str) -> None:
        self.telegram_payment_charge_id = telegram_payment_charge_id
        super().__init__("payment not found")


class AlreadyRefunded(PaymentError):
    def __init__(self, telegram_payment_charge_id: str) -> None:
        self.telegram_payment_charge_id = telegram_payment_charge_id
        super().__init__("payment already refunded")


class RefundInProgress(AlreadyRefunded):
    """A refund of this payment was started and Telegram's answer is still awaited."""


class RefundRefused(PaymentError):
    """Telegram definitively refused refundStarPayment (e.g. CHARGE_NOT_FOUND); `reason` is its text."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"refund refused: {reason}")


class ChargeAlreadyRefunded(PaymentError):
    """Telegram says the charge was refunded already: the Stars are back with the user."""


class InvalidPayment(PaymentError):
    """A successful payment we can't turn into credits (e.g. not in Telegram Stars)."""
