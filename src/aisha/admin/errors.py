"""Refused admin operations. Each `AdminError` names the locale text that explains it (`key`, with
`params` for its placeholders); the bot's presenter and the CLI turn them into words."""

from __future__ import annotations

from typing import Any, ClassVar

from aisha.billing.errors import InsufficientCredits

MAX_REASON_LENGTH = 200
# Far above any real correction: a bigger number is a typo (an extra zero or two), not an intent.
MAX_ADJUST_AMOUNT = 1_000_000


class AdminError(Exception):
    """A refused admin operation; `key` names the locale text that explains it."""

    key = "admin.error.generic"
    params: ClassVar[dict[str, Any]] = {}  # the text's placeholders


class UserNotFound(AdminError):
    key = "admin.error.user_not_found"


class ReasonRequired(AdminError):
    key = "admin.error.reason_required"


class ReasonTooLong(AdminError):
    key = "admin.error.reason_too_long"
    params: ClassVar[dict[str, Any]] = {"max": MAX_REASON_LENGTH}


class BadAmount(AdminError):
    key = "admin.error.bad_amount"


class AmountTooLarge(AdminError):
    key = "admin.error.amount_too_large"
    params: ClassVar[dict[str, Any]] = {"max": MAX_ADJUST_AMOUNT}


class CannotBlockAdmin(AdminError):
    key = "admin.error.cannot_block_admin"


class EmptyBroadcast(AdminError):
    """A broadcast with no text: the usage is the explanation."""

    key = "admin.usage.broadcast"


class BroadcastRefused(AdminError):
    """Telegram would refuse the broadcast's text (HTML it can't parse, nothing left to show, too
    long): refused before anything is queued, with Telegram's own words as the `reason`."""

    key = "admin.error.broadcast_refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TakeRefused(InsufficientCredits):
    """Taking `required` credits from `user_id` would bring the balance below zero."""

    def __init__(self, *, user_id: int, balance: int, required: int) -> None:
        self.user_id = user_id
        super().__init__(balance=balance, required=required)
