"""Idempotency keys of the ledger entries a Stars payment writes (see `billing/payments.py`)."""

from __future__ import annotations

import hashlib

from aisha.billing.books import MAX_KEY_LENGTH


def payment_key(telegram_payment_charge_id: str) -> str:
    return _key("payment", telegram_payment_charge_id)


def refund_key(telegram_payment_charge_id: str, attempt: int = 1) -> str:
    """The REFUND debit of a payment's `attempt`-th refund (only a refused one is followed by another)."""
    suffix = "" if attempt == 1 else f"#{attempt}"
    return _key("refund", telegram_payment_charge_id + suffix)


def refund_back_key(telegram_payment_charge_id: str, attempt: int = 1) -> str:
    """The REFUND credit that gives the debit of a refused refund back."""
    suffix = "" if attempt == 1 else f"#{attempt}"
    return _key("refund-back", telegram_payment_charge_id + suffix)


def _key(prefix: str, charge_id: str) -> str:
    key = f"{prefix}:{charge_id}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    # Charge ids may be up to 256 characters; the key column holds 160. A digest stays unique.
    return f"{prefix}:sha256:{hashlib.sha256(charge_id.encode()).hexdigest()}"
