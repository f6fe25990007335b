"""Top-ups paid in Telegram Stars: invoice payloads, pre-checkout checks, crediting, refunds.

The bot's handlers call these inside one unit of work each:
- pre_checkout_query  -> `validate_pre_checkout` (None = answer ok, else a locale error key);
- successful_payment  -> `record_successful_payment` (credits once per Telegram charge id);
- refunded_payment    -> `record_refunded_payment` (a refund made outside the bot);
- admin refund        -> `refund` (credits taken back, payment REFUNDING: the intent), and after
  commit `complete_refund` (refundStarPayment outside any transaction, its answer in a new one).

Ledger entries, all with reference `payment:<payment id>`: one TOPUP credit per payment (key
`payment:<charge>`); one REFUND debit per refund started (`refund:<charge>`, then
`refund:<charge>#<n>` for the n-th), of the payment's credits, or of what was left for a refund
made outside the bot (none when nothing was); and one REFUND credit (`refund-back:<charge>`,
`...#<n>`) giving that debit back when Telegram refused the refund.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from fractions import Fraction
from typing import Any, cast

import structlog
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.errors import (
    AlreadyRefunded,
    ChargeAlreadyRefunded,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidPayment,
    PaymentNotFound,
    RefundInProgress,
    RefundRefused,
)

# Re-exported: the keys were first defined here.
from aisha.billing.keys import payment_key as payment_key
from aisha.billing.keys import refund_back_key as refund_back_key
from aisha.billing.keys import refund_key as refund_key
from aisha.billing.models import EntryKind, Payment, PaymentStatus
from aisha.billing.ports import StarRefunds as StarRefunds  # re-exported: first defined here
from aisha.billing.prices import PriceList, StarPackage
from aisha.billing.refund_asks import ask_again, count_unanswered
from aisha.billing.results import (
    InvoicePayload,
    PaymentResult,
    RefundCompletion,
    RefundedPayment,
    RefundOutcome,
    RefundResult,
)
from aisha.billing.service import LedgerService
from aisha.db.session import unit_of_work
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
REFUND_CANCELLED_DESCRIPTION = "ledger.payment_refund_cancelled"
log = structlog.get_logger(__name__)


def parse_payload(payload: str) -> InvoicePayload | None:
    parts = payload.split(":")
    if len(parts) != 4 or parts[0] != PAYLOAD_PREFIX or not parts[2].isdigit():
        return None
    return InvoicePayload(package_id=parts[1], user_id=int(parts[2]), nonce=parts[3])


class PaymentService:
    def __init__(
        self,
        *,
        ledger: LedgerService,
        prices: PriceList,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        refunds: StarRefunds | None = None,
        max_refund_asks: int = 60,
    ) -> None:
        self._ledger = ledger
        self._prices = prices
        self._sessions = sessions  # for the refund's own transactions (complete_refund, the sweep)
        self._refunds = refunds
        self._max_refund_asks = max_refund_asks  # then the refund waits for the operator

    @property
    def refunds_enabled(self) -> bool:
        """Whether Telegram can be asked for refunds (the bot adapter gave its refundStarPayment)."""
        return self._refunds is not None

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
        """Start a refund, in the caller's transaction: take the payment's credits back (only if
        the user still has them) and mark it REFUNDING, the intent to call refundStarPayment.

        Once this commits, `complete_refund` asks Telegram (outside any transaction) and records
        the answer; the recovery sweep (`sweep_refunds`) asks again for refunds left without one.
        A refund the sweep gave up on (`REFUND_MAX_ASKS`) is asked again the same way, with nothing
        taken twice. Raises PaymentNotFound, RefundInProgress (still being asked), AlreadyRefunded,
        InsufficientCredits (then nothing is written).
        """
        row = await self._payment_row(session, telegram_payment_charge_id)
        if row is None:
            raise PaymentNotFound(telegram_payment_charge_id)
        if row.status == PaymentStatus.REFUNDING:
            # One the sweep gave up on is the operator's to ask again: its credits are taken back
            # already, so nothing moves; its asks are counted anew.
            if not await ask_again(session, row=row):
                raise RefundInProgress(telegram_payment_charge_id)
            balance = await self._ledger.get_balance(session=session, user_id=row.user_id)
            return RefundResult(user_id=row.user_id, stars=row.amount, credits=row.credits, balance=balance)
        if row.status == PaymentStatus.REFUNDED:
            raise AlreadyRefunded(telegram_payment_charge_id)
        attempt = row.refund_attempts + 1
        async with session.begin_nested():
            won = await self._move(
                session,
                row,
                to=PaymentStatus.REFUNDING,
                refunded_at=self._ledger.clock.now(),
                attempt=attempt,
            )
            if not won:  # another refund started first
                raise RefundInProgress(telegram_payment_charge_id)
            # InsufficientCredits here rolls the status back too: nothing is written.
            entry = await self._ledger.debit(
                session=session,
                user_id=row.user_id,
                amount=row.credits,
                key=refund_key(telegram_payment_charge_id, attempt),
                kind=EntryKind.REFUND,
                description=REFUND_DESCRIPTION,
                description_args={"stars": row.amount, "credits": row.credits},
                reference=f"payment:{row.id}",
            )
        return RefundResult(user_id=row.user_id, stars=row.amount, credits=row.credits, balance=entry.balance)

    async def complete_refund(self, *, telegram_payment_charge_id: str) -> RefundCompletion:
        """Ask Telegram to give the Stars of a REFUNDING payment back, then record its answer in a
        transaction of its own: REFUNDED (also when Telegram says it was refunded already), PAID
        with the credits given back when Telegram refuses, unchanged when there is no answer."""
        assert self._sessions is not None and self._refunds is not None, "wired by build_services"
        async with self._sessions() as session:
            row = await self._payment_row(session, telegram_payment_charge_id)
        if row is None:
            raise PaymentNotFound(telegram_payment_charge_id)
        if row.status != PaymentStatus.REFUNDING:  # finished meanwhile (the sweep, a service message)
            outcome = (
                RefundOutcome.REFUNDED if row.status == PaymentStatus.REFUNDED else RefundOutcome.REFUSED
            )
            return RefundCompletion(outcome=outcome)
        try:
            await self._refunds.refund_star_payment(
                user_id=row.user_id, telegram_payment_charge_id=telegram_payment_charge_id
            )
        except ChargeAlreadyRefunded:
            pass  # an earlier call got through although its answer was lost
        except RefundRefused as refusal:
            await self._cancel_refund(row, telegram_payment_charge_id)
            log.warning("payment.refund_refused", user_id=row.user_id, reason=refusal.reason)
            return RefundCompletion(outcome=RefundOutcome.REFUSED, reason=refusal.reason)
        except Exception as error:
            log.warning("payment.refund_unanswered", user_id=row.user_id, error=repr(error))
            await count_unanswered(
                self._sessions,
                row=row,
                charge_id=telegram_payment_charge_id,
                now=self._ledger.clock.now(),
                max_asks=self._max_refund_asks,
            )
            return RefundCompletion(outcome=RefundOutcome.PENDING)
        async with unit_of_work(self._sessions) as session:
            await self._move(session, row, to=PaymentStatus.REFUNDED, refunded_at=self._ledger.clock.now())
        log.info("payment.refunded", user_id=row.user_id, stars=row.amount, credits=row.credits)
        return RefundCompletion(outcome=RefundOutcome.REFUNDED)

    async def sweep_refunds(self) -> int:
        """The recovery check: ask Telegram again for every refund still without an answer, unless
        it was asked as many times as allowed (then the refund waits for the operator)."""
        assert self._sessions is not None
        async with self._sessions() as session:
            charges = (
                await session.scalars(
                    select(Payment.telegram_payment_charge_id).where(
                        Payment.status == PaymentStatus.REFUNDING, Payment.refund_given_up_at.is_(None)
                    )
                )
            ).all()
        settled = 0
        for charge_id in charges:
            completion = await self.complete_refund(telegram_payment_charge_id=charge_id)
            settled += completion.outcome != RefundOutcome.PENDING
        return settled

    async def record_refunded_payment(
        self, *, session: AsyncSession, user_id: int, telegram_payment_charge_id: str
    ) -> RefundedPayment | None:
        """Telegram says a payment was refunded (a refund made outside the bot, or the service
        message of ours): mark it REFUNDED and take its credits back, down to a zero balance at
        most; what was already spent is kept on the payment as `refund_shortfall`. Idempotent.
        None for a payment we don't know (logged)."""
        row = await self._payment_row(session, telegram_payment_charge_id)
        if row is None or row.user_id != user_id:
            log.warning("payment.refunded_unknown", user_id=user_id, known=row is not None)
            return None
        if row.status == PaymentStatus.REFUNDED:
            return RefundedPayment(taken=0, shortfall=row.refund_shortfall, replayed=True)
        now = self._ledger.clock.now()
        if row.status == PaymentStatus.REFUNDING:  # our own refund: its credits are taken already
            await self._move(session, row, to=PaymentStatus.REFUNDED, refunded_at=now)
            return RefundedPayment(taken=0, shortfall=0, replayed=True)
        attempt = row.refund_attempts + 1
        async with session.begin_nested():
            if not await self._move(
                session, row, to=PaymentStatus.REFUNDED, refunded_at=now, attempt=attempt
            ):
                return None  # a refund started meanwhile; it ends the same way
            taken = await self._take_up_to(session, row, key=refund_key(telegram_payment_charge_id, attempt))
            shortfall = row.credits - taken
            if shortfall:
                await session.execute(
                    update(Payment)
                    .where(Payment.id == row.id)
                    .values(refund_shortfall=shortfall)
                    .execution_options(synchronize_session=False)
                )
        if shortfall:
            log.warning(
                "payment.refund_shortfall",
                user_id=user_id,
                payment_id=str(row.id),
                credits=row.credits,
                taken=taken,
                shortfall=shortfall,
            )
        log.info("payment.refunded_by_telegram", user_id=user_id, stars=row.amount, credits=taken)
        return RefundedPayment(taken=taken, shortfall=shortfall, replayed=False)

    # --- internals -----------------------------------------------------------------------------

    async def _payment_row(self, session: AsyncSession, telegram_payment_charge_id: str) -> Any:
        return (
            await session.execute(
                select(
                    Payment.id,
                    Payment.user_id,
                    Payment.amount,
                    Payment.credits,
                    Payment.status,
                    Payment.refund_attempts,
                    Payment.refund_shortfall,
                ).where(Payment.telegram_payment_charge_id == telegram_payment_charge_id)
            )
        ).first()

    async def _move(
        self,
        session: AsyncSession,
        row: Any,
        *,
        to: PaymentStatus,
        refunded_at: datetime | None,
        attempt: int | None = None,
    ) -> bool:
        """Move the payment on from the status (and refund attempt) `row` saw; False if it moved
        on already, so every refund ends exactly once."""
        values: dict[str, Any] = {"status": to, "refunded_at": refunded_at}
        if attempt is not None:
            values["refund_attempts"] = attempt
        if to == PaymentStatus.REFUNDING:  # a refund started: Telegram not asked yet
            values |= {"refund_asks": 0, "refund_given_up_at": None}
        won = await session.execute(
            update(Payment)
            .where(
                Payment.id == row.id,
                Payment.status == row.status,
                Payment.refund_attempts == row.refund_attempts,
            )
            .values(**values)
            .returning(Payment.id)
            .execution_options(synchronize_session=False)
        )
        return won.first() is not None

    async def _cancel_refund(self, row: Any, telegram_payment_charge_id: str) -> None:
        """Telegram refused: the payment is PAID again and its credits come back."""
        assert self._sessions is not None
        async with unit_of_work(self._sessions) as session:
            if not await self._move(session, row, to=PaymentStatus.PAID, refunded_at=None):
                return
            credits = row.credits - row.refund_shortfall
            if credits > 0:
                await self._ledger.credit(
                    session=session,
                    user_id=row.user_id,
                    amount=credits,
                    key=refund_back_key(telegram_payment_charge_id, row.refund_attempts),
                    kind=EntryKind.REFUND,
                    description=REFUND_CANCELLED_DESCRIPTION,
                    description_args={"stars": row.amount, "credits": credits},
                    reference=f"payment:{row.id}",
                )

    async def _take_up_to(self, session: AsyncSession, row: Any, *, key: str) -> int:
        """Debit the payment's credits, or the whole balance when less is left; returns what was taken."""
        amount: int = min(row.credits, await self._ledger.get_balance(session=session, user_id=row.user_id))
        for _ in range(3):
            if amount <= 0:
                return 0
            try:
                await self._ledger.debit(
                    session=session,
                    user_id=row.user_id,
                    amount=amount,
                    key=key,
                    kind=EntryKind.REFUND,
                    description=REFUND_DESCRIPTION,
                    description_args={"stars": row.amount, "credits": amount},
                    reference=f"payment:{row.id}",
                )
                return amount
            except InsufficientCredits as error:  # spent meanwhile: take what is left now
                amount = min(row.credits, error.balance)
        raise InsufficientCredits(balance=amount, required=row.credits)

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
