"""What billing needs from outside, implemented by adapters."""

from __future__ import annotations

from typing import Protocol


class StarRefunds(Protocol):
    """Telegram's refundStarPayment, implemented by the bot adapter."""

    async def refund_star_payment(self, *, user_id: int, telegram_payment_charge_id: str) -> None:
        """Give the Stars back. Raises ChargeAlreadyRefunded and RefundRefused (a definitive no);
        any other error means no answer, and asking again is safe."""
        ...
