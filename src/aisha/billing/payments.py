"""Top-ups paid in Telegram Stars: invoice payloads, pre-checkout checks, crediting, refunds.

The bot's handlers call these inside one unit of work each:
- pre_checkout_query  -> `validate_pre_checkout` (None = answer ok, else a locale error key);
- successful_payment  -> `record_successful_payment` (credits once per Telegram charge id);
- admin refund        -> `refund`, then Telegram's refundStarPayment, then commit.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.errors import AlreadyRefunded, IdempotencyConflict, InvalidPayment, PaymentNotFound
from aisha.billing.models import EntryKind, Payment, PaymentStatus
from aisha.billing.prices import PriceList, StarPackage
from aisha.billing.service import MAX_KEY_LENGTH, LedgerService
from aisha.db.upsert import insert_ignore
from aisha.users.models import User

STARS_CURRENCY = "XTR"
PAYLOAD_PREFIX = "topup"
MAX_PAYLOAD_BYTES = 128  # Telegram's limit for invoice payloads

# Locale keys answered to a pre-checkout query.
ERROR_INVALID_PAYLOAD = "payments.error.invalid_payload"
ERROR_CURRENCY = "payments.error.currency"
ERROR_PACKAGE_GONE = "payments.error.package_gone"
ERROR_AMOUNT_MISMATCH = "payments.error.amount_mismatch"
ERROR_WRONG_USER = "payments.error.wrong_user"
ERROR_UNKNOWN_USER = "payments.error.unknown_user"
ERROR_BLOCKED = "payments.error.blocked"

TOPUP_DESCRIPTION = "ledger.topup"
REFUND_DESCRIPTION = "ledger.payment_refund"


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


@dataclass(frozen=True, slots=True)
class RefundResult:
    user_id: int
    stars: int  # what Telegram should give back (refundStarPayment)
    credits: int  # what was taken from the balance
    balance: int


def payment_key(telegram_payment_charge_id: str) -> str:
    return _key("payment", telegram_payment_charge_id)


def refund_key(telegram_payment_charge_id: str) -> str:
    return _key("refund", telegram_payment_charge_id)


def _key(prefix: str, charge_id: str) -> str:
    key = f"{prefix}:{charge_id}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    # Charge ids may be up to 256 characters; the key column holds 160. A digest stays unique.
    return f"{prefix}:sha256:{hashlib.sha256(charge_id.encode()).hexdigest()}"


def parse_payload(payload: str) -> InvoicePayload | None:
    parts = payload.split(":")
    if len(parts) != 4 or parts[0] != PAYLOAD_PREFIX or not parts[2].isdigit():
        return None
    return InvoicePayload(package_id=parts[1], user_id=int(parts[2]), nonce=parts[3])


class PaymentService:
    def __init__(self, *, ledger: LedgerService, prices: PriceList) -> None:
        self._ledger = ledger
        self._prices = prices

    @property
    def packages(self) -> tuple[StarPackage, ...]:
        return self._prices.packages

    def make_invoice_payload(self, *, user_id: int, package: StarPackage) -> str:
        """`topup:<package>:<user>:<nonce>`; the nonce makes every invoice distinct."""
        payload = f"{PAYLOAD_PREFIX}:{package.id}:{user_id}:{secrets.token_hex(4)}"
        assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
        return payload

    async def validate_pre_checkout(
        self, *, session: AsyncSession, user_id: int, currency: str, total_amount: int, payload: str
    ) -> str | None:
        """None when the payment may go ahead, else the locale key of the reason to refuse."""
        parsed = parse_payload(payload)
        if parsed is None:
            return ERROR_INVALID_PAYLOAD
        if currency != STARS_CURRENCY:
            return ERROR_CURRENCY
        package = self._prices.package(parsed.package_id)
        if package is None:
            return ERROR_PACKAGE_GONE
        if package.stars != total_amount:
            return ERROR_AMOUNT_MISMATCH
        if parsed.user_id != user_id:
            return ERROR_WRONG_USER
        blocked = await session.scalar(select(User.is_blocked).where(User.telegram_id == user_id))
        if blocked is None:
            return ERROR_UNKNOWN_USER
        if blocked:
            return ERROR_BLOCKED
        return None

    async def record_successful_payment(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        telegram_payment_charge_id: str,
        provider_payment_charge_id: str | None,
        currency: str,
        total_amount: int,
        payload: str,
    ) -> PaymentResult:
        """Store the payment and credit the user, once per Telegram charge id.

        Telegram has already taken the Stars, so a payment whose package changed since the
        pre-checkout is still credited (at the least generous current rate), never dropped.
        """
        if currency != STARS_CURRENCY:
            raise InvalidPayment(f"only Telegram Stars (XTR) are accepted, got {currency!r}")
        if total_amount <= 0:
            raise InvalidPayment(f"payment amount must be positive, got {total_amount}")
        stored = await self._replay(session, telegram_payment_charge_id, user_id=user_id)
        if stored is not None:
            return stored

        parsed = parse_payload(payload)
        package = self._prices.package(parsed.package_id) if parsed else None
        credits = self._credits_for(package, total_amount)
        payment_id = uuid.uuid4()
        async with session.begin_nested():
            # On PostgreSQL a concurrent duplicate waits here for the first transaction, then
            # inserts nothing; it then answers from the stored row below.
            inserted = await insert_ignore(
                session,
                cast(Table, Payment.__table__),
                {
                    "id": payment_id,
                    "user_id": user_id,
                    "telegram_payment_charge_id": telegram_payment_charge_id,
                    "provider_payment_charge_id": provider_payment_charge_id,
                    "currency": currency,
                    "amount": total_amount,
                    "credits": credits,
                    "package_id": (parsed.package_id if parsed else "")[:64],
                    "payload": payload[:MAX_PAYLOAD_BYTES],
                    "status": PaymentStatus.PAID,
                    "created_at": self._ledger.clock.now(),
                    "refunded_at": None,
                },
                conflict_columns=["telegram_payment_charge_id"],
            )
            if inserted:
                entry = await self._ledger.credit(
                    session=session,
                    user_id=user_id,
                    amount=credits,
                    key=payment_key(telegram_payment_charge_id),
                    kind=EntryKind.TOPUP,
                    description=TOPUP_DESCRIPTION,
                    description_args={"stars": total_amount, "credits": credits},
                    reference=f"payment:{payment_id}",
                )
        if not inserted:
            stored = await self._replay(session, telegram_payment_charge_id, user_id=user_id)
            if stored is None:  # pragma: no cover - the conflicting row must be visible now
                raise InvalidPayment("payment conflicted but can't be found")
            return stored
        return PaymentResult(credits=credits, balance=entry.balance, replayed=entry.replayed)

    async def refund(self, *, session: AsyncSession, telegram_payment_charge_id: str) -> RefundResult:
        """Take the payment's credits back (only if the user still has them) and mark it refunded.

        The caller then calls Telegram's refundStarPayment and commits only if that succeeded.
        """
        row = (
            await session.execute(
                select(Payment.id, Payment.user_id, Payment.amount, Payment.credits, Payment.status).where(
                    Payment.telegram_payment_charge_id == telegram_payment_charge_id
                )
            )
        ).first()
        if row is None:
            raise PaymentNotFound(telegram_payment_charge_id)
        if row.status == PaymentStatus.REFUNDED:
            raise AlreadyRefunded(telegram_payment_charge_id)
        async with session.begin_nested():
            won = (
                await session.execute(
                    update(Payment)
                    .where(Payment.id == row.id, Payment.status == PaymentStatus.PAID)
                    .values(status=PaymentStatus.REFUNDED, refunded_at=self._ledger.clock.now())
                    .returning(Payment.id)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if won is None:
                raise AlreadyRefunded(telegram_payment_charge_id)
            # InsufficientCredits here rolls the status back too: nothing is written.
            entry = await self._ledger.debit(
                session=session,
                user_id=row.user_id,
                amount=row.credits,
                key=refund_key(telegram_payment_charge_id),
                kind=EntryKind.REFUND,
                description=REFUND_DESCRIPTION,
                description_args={"stars": row.amount, "credits": row.credits},
                reference=f"payment:{row.id}",
            )
        return RefundResult(user_id=row.user_id, stars=row.amount, credits=row.credits, balance=entry.balance)

    # --- internals -----------------------------------------------------------------------------

    def _credits_for(self, package: StarPackage | None, stars: int) -> int:
        if package is not None and package.stars == stars:
            return package.credits
        worst = min(self._prices.packages, key=lambda p: Fraction(p.credits, p.stars))
        return max(1, stars * worst.credits // worst.stars)

    async def _replay(
        self, session: AsyncSession, telegram_payment_charge_id: str, *, user_id: int
    ) -> PaymentResult | None:
        row = (
            await session.execute(
                select(Payment.user_id, Payment.credits).where(
                    Payment.telegram_payment_charge_id == telegram_payment_charge_id
                )
            )
        ).first()
        if row is None:
            return None
        key = payment_key(telegram_payment_charge_id)
        if row.user_id != user_id:
            raise IdempotencyConflict(key=key, reason="the payment belongs to another user")
        entry = await self._ledger.stored_entry(session=session, key=key)
        if entry is None:  # pragma: no cover - written in the same savepoint as the payment
            raise InvalidPayment("payment stored without its ledger entry")
        return PaymentResult(credits=row.credits, balance=entry.balance, replayed=True)
