"""The credit ledger rules: balances, immutable entries, two-phase holds, idempotency.

Every method runs inside the caller's transaction (`session`) and never commits. Each operation
writes its entry and moves the cached balance together, so that a refused or duplicated operation
leaves nothing behind while the caller's other work stays: on PostgreSQL in one statement
(`billing/pg.py`: the entry's unique key is the gate, no savepoint), and when that statement writes
nothing, or on SQLite, by the portable path (a pre-read, then the writes in a SAVEPOINT),
which also replays a used key or raises the precise error.

Invariants:
- `credit_accounts.balance` >= 0, enforced by a conditional UPDATE (plus the CHECK constraint);
- `credit_accounts.balance` == sum(`credit_entries.amount`) per account;
- each entry's `balance_after` == the previous entry's `balance_after` + its `amount`, where
  "previous" means by `seq`: the account's `last_seq`, bumped by the same UPDATE that moves the
  balance (under its row lock), so entries are ordered as applied whatever the clocks say;
- `credit_accounts.last_seq` == the `seq` of the account's newest entry;
- an idempotency key is applied at most once; the same key again returns the first result;
- a hold resolves exactly once (captured, released or expired): one hold entry, then one capture
  or release entry that returns `amount - captured_amount`.

Where it lives: this facade and its credits and debits; `billing/holds.py` the holds;
`billing/books.py` the portable row operations; `billing/results.py` what they return.

`aisha ledger verify` (`billing/verify/`) checks all of these on the stored books, and that
each Stars payment was credited once and each refunded one debited once.

Lock order is always "account row, then hold row", so transactions that each touch one account
never deadlock each other; a unit of work spanning several accounts should lock them in user order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import ids, pg
from aisha.billing.books import (
    HOLD_COLUMNS,
    MAX_KEY_LENGTH,
    OVERVIEW_FIGURES,
    OVERVIEW_PAGE,
    Books,
    NewEntry,
    NewHold,
    Resolution,
    check_texts,
    hold_from_row,
    replay_entry,
    require_positive,
)
from aisha.billing.errors import InvalidAmount
from aisha.billing.holds import Holds
from aisha.billing.models import CreditAccount, CreditHold, EntryKind, HoldStatus
from aisha.billing.results import (
    HISTORY_COLUMNS,
    AccountMismatch,
    EntryResult,
    HistoryItem,
    HistoryPage,
    HoldInfo,
    HoldResult,
    Overview,
    ResolutionResult,
)
from aisha.billing.verify import verify_ledger
from aisha.clock import Clock

__all__ = [  # re-exported: first defined here
    "HISTORY_COLUMNS",
    "MAX_KEY_LENGTH",
    "AccountMismatch",
    "EntryResult",
    "HistoryItem",
    "HistoryPage",
    "HoldInfo",
    "HoldResult",
    "LedgerService",
    "ResolutionResult",
]

CREDIT_KINDS = frozenset({EntryKind.BONUS, EntryKind.TOPUP, EntryKind.REFUND, EntryKind.ADJUSTMENT})
DEBIT_KINDS = frozenset({EntryKind.CHARGE, EntryKind.REFUND, EntryKind.ADJUSTMENT})

# Locale keys of the entries the ledger writes on its own.
DEFAULT_DESCRIPTIONS: Mapping[EntryKind, str] = {
    EntryKind.BONUS: "ledger.bonus",
    EntryKind.TOPUP: "ledger.topup",
    EntryKind.REFUND: "ledger.refund",
    EntryKind.ADJUSTMENT: "ledger.adjustment",
    EntryKind.CHARGE: "ledger.charge",
    EntryKind.HOLD: "ledger.hold",
    EntryKind.CAPTURE: "ledger.capture",
    EntryKind.RELEASE: "ledger.release",
}
WELCOME_DESCRIPTION = "ledger.welcome_bonus"


class LedgerService:
    def __init__(self, *, clock: Clock, hold_ttl: timedelta) -> None:
        if hold_ttl <= timedelta(0):
            raise ValueError("hold_ttl must be positive")
        self._clock = clock
        self._hold_ttl = hold_ttl
        self._books = Books(clock)
        self._holds = Holds(books=self._books, clock=clock, hold_ttl=hold_ttl)

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def hold_ttl(self) -> timedelta:
        return self._hold_ttl

    # --- accounts ------------------------------------------------------------------------------

    async def ensure_account(self, *, session: AsyncSession, user_id: int) -> None:
        """Create the user's account with balance 0 unless it exists (the user row must exist)."""
        await self._books.ensure_account(session=session, user_id=user_id)

    async def stored_entry(self, *, session: AsyncSession, key: str) -> EntryResult | None:
        """The entry written under an idempotency key, as a replayed result; None if none."""
        stored = await self._books.stored_entry(session, key)
        if stored is None:
            return None
        return EntryResult(
            entry_id=stored.id, balance=stored.balance_after, amount=stored.amount, replayed=True
        )

    async def get_balance(self, *, session: AsyncSession, user_id: int) -> int:
        """What the user can spend now (held credits are already out); 0 without an account."""
        balance = await session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == user_id))
        return balance or 0

    # --- credits and debits --------------------------------------------------------------------

    async def credit(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        amount: int,
        key: str,
        kind: EntryKind = EntryKind.TOPUP,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
        reference: str | None = None,
    ) -> EntryResult:
        """Add credits (a bonus, top-up, refund or positive adjustment)."""
        entry = _one_way(
            "credit", CREDIT_KINDS, +1, user_id, amount, key, kind, description, description_args, reference
        )
        return await self._apply(session, entry)

    async def debit(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        amount: int,
        key: str,
        kind: EntryKind = EntryKind.CHARGE,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
        reference: str | None = None,
    ) -> EntryResult:
        """Take credits at once; InsufficientCredits (and nothing written) if they aren't there."""
        entry = _one_way(
            "debit", DEBIT_KINDS, -1, user_id, amount, key, kind, description, description_args, reference
        )
        return await self._apply(session, entry)

    async def charge(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        amount: int,
        key: str,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
        reference: str | None = None,
    ) -> EntryResult:
        """A direct charge for an instant operation (no hold)."""
        return await self.debit(
            session=session,
            user_id=user_id,
            amount=amount,
            key=key,
            kind=EntryKind.CHARGE,
            description=description,
            description_args=description_args,
            reference=reference,
        )

    async def adjust(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        amount: int,
        key: str,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
        reference: str | None = None,
    ) -> EntryResult:
        """An admin correction, signed; a negative one is refused if it would go below zero."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise InvalidAmount(f"adjustment must be a non-zero integer, got {amount!r}")
        entry = NewEntry(
            user_id=user_id,
            kind=EntryKind.ADJUSTMENT,
            delta=amount,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[EntryKind.ADJUSTMENT],
            description_args=description_args,
            reference=reference,
        )
        return await self._apply(session, entry)

    async def grant_welcome_bonus(
        self, *, session: AsyncSession, user_id: int, amount: int
    ) -> EntryResult | None:
        """The welcome bonus, once per user; None when the bonus is 0 (nothing is written)."""
        if amount < 0:
            raise InvalidAmount(f"welcome bonus can't be negative, got {amount}")
        if amount == 0:
            return None
        entry = NewEntry(
            user_id=user_id,
            kind=EntryKind.BONUS,
            delta=amount,
            key=f"welcome:{user_id}",
            description=WELCOME_DESCRIPTION,
            description_args={"amount": amount},
            reference=None,
        )
        # The operator may change the bonus later; a user who had one keeps the first.
        return await self._apply(session, entry, check_amount=False)

    # --- holds ---------------------------------------------------------------------------------

    async def hold(
        self,
        *,
        session: AsyncSession,
        user_id: int,
        amount: int,
        key: str,
        reference: str,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
    ) -> HoldResult:
        """Reserve credits for a job; they leave the balance now and resolve exactly once later."""
        require_positive(amount)
        new = NewHold(
            user_id=user_id,
            amount=amount,
            key=key,
            reference=reference,
            description=description or DEFAULT_DESCRIPTIONS[EntryKind.HOLD],
            description_args=description_args,
        )
        return await self._holds.hold(session=session, new=new)

    async def capture(
        self,
        *,
        session: AsyncSession,
        hold_id: uuid.UUID,
        amount: int,
        key: str,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
    ) -> ResolutionResult:
        """The job succeeded: spend `amount` (0..held) and give the rest back in the same entry."""
        description = description or DEFAULT_DESCRIPTIONS[EntryKind.CAPTURE]
        return await self._resolve(
            session, hold_id, HoldStatus.CAPTURED, amount, key, description, description_args
        )

    async def release(
        self,
        *,
        session: AsyncSession,
        hold_id: uuid.UUID,
        key: str,
        description: str | None = None,
        description_args: Mapping[str, Any] | None = None,
    ) -> ResolutionResult:
        """The job failed: the whole held amount goes back."""
        description = description or DEFAULT_DESCRIPTIONS[EntryKind.RELEASE]
        return await self._resolve(
            session, hold_id, HoldStatus.RELEASED, 0, key, description, description_args
        )

    async def expire_holds(self, *, session: AsyncSession, limit: int = 100) -> list[ResolutionResult]:
        """Release the active holds whose time is up (the recovery sweep); returns what it did.

        A hold captured or released meanwhile is skipped. Call it again while it returns `limit`
        results; each call may run in its own short transaction.
        """
        return await self._holds.expire(session=session, limit=limit)

    # --- queries -------------------------------------------------------------------------------

    async def get_hold(self, *, session: AsyncSession, hold_id: uuid.UUID) -> HoldInfo | None:
        return await self._books.hold_info(session, hold_id)

    async def active_holds(self, *, session: AsyncSession, user_id: int) -> list[HoldInfo]:
        rows = await session.execute(
            select(*HOLD_COLUMNS)
            .where(CreditHold.user_id == user_id, CreditHold.status == HoldStatus.ACTIVE)
            .order_by(CreditHold.created_at, CreditHold.id)
        )
        return [hold_from_row(row) for row in rows]

    async def held_total(self, *, session: AsyncSession, user_id: int) -> int:
        """Credits reserved by the user's active holds (shown next to the balance)."""
        total = await session.scalar(
            select(func.coalesce(func.sum(CreditHold.amount), 0)).where(
                CreditHold.user_id == user_id, CreditHold.status == HoldStatus.ACTIVE
            )
        )
        return int(total or 0)

    async def history(
        self, *, session: AsyncSession, user_id: int, limit: int = 10, offset: int = 0
    ) -> HistoryPage:
        """One page of the user's entries, newest first, with the total count."""
        return (await self.overview(session=session, user_id=user_id, limit=limit, offset=offset)).page

    async def overview(
        self, *, session: AsyncSession, user_id: int, limit: int = 10, offset: int = 0
    ) -> Overview:
        """The balance, the credits held and one page of history (what /balance shows), read in one
        statement (one more only when the page is empty)."""
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        params = {"user_id": user_id, "limit": limit, "offset": offset}
        rows = (await session.execute(OVERVIEW_PAGE, params)).all()
        first = rows[0] if rows else (await session.execute(OVERVIEW_FIGURES, params)).one()
        items = [HistoryItem.of(row) for row in rows]
        return Overview(
            balance=int(first.balance or 0),
            held=int(first.held or 0),
            page=HistoryPage(items=items, total=int(first.total or 0), limit=limit, offset=offset),
        )

    async def verify_all(self, *, session: AsyncSession) -> list[AccountMismatch]:
        """Every account whose books are wrong: balances and the balance_after chain, holds
        resolved once with matching amounts, payments credited (and refunded) once. Empty when
        the books are right. The checks live in `billing/verify/`."""
        return await verify_ledger(session)

    # --- internals -----------------------------------------------------------------------------

    async def _resolve(
        self,
        session: AsyncSession,
        hold_id: uuid.UUID,
        target: HoldStatus,
        spend: int,
        key: str,
        description: str,
        description_args: Mapping[str, Any] | None,
    ) -> ResolutionResult:
        """Capture or release: the resolution as asked."""
        resolution = Resolution(
            hold_id=hold_id,
            target=target,
            spend=spend,
            key=key,
            description=description,
            description_args=description_args,
        )
        return await self._holds.resolve(session=session, resolution=resolution)

    async def _apply(
        self, session: AsyncSession, entry: NewEntry, *, check_amount: bool = True
    ) -> EntryResult:
        """One entry without a hold: move the balance by `entry.delta` and record it, once per key."""
        check_texts(key=entry.key, description=entry.description, reference=entry.reference)
        amount = entry.delta if check_amount else None
        return await self._books.write_once(
            session,
            key=entry.key,
            one_statement=lambda: self._apply_in_one_statement(session, entry),
            write=lambda: self._books.write_entry(session, entry),
            replay=lambda stored: replay_entry(
                stored, key=entry.key, user_id=entry.user_id, kind=entry.kind, amount=amount
            ),
        )

    async def _apply_in_one_statement(self, session: AsyncSession, entry: NewEntry) -> EntryResult | None:
        """`billing/pg.py`'s statement; None when it wrote nothing (key used, credits short, no
        account yet): then the portable path replays, raises or creates the account."""
        entry_id = ids.ordered_uuid()
        balance = await pg.apply(session, entry, entry_id=entry_id, now=self._clock.now())
        if balance is None:
            return None
        return EntryResult(entry_id=entry_id, balance=balance, amount=entry.delta, replayed=False)


def _one_way(
    name: str,
    kinds: frozenset[EntryKind],
    sign: int,
    user_id: int,
    amount: int,
    key: str,
    kind: EntryKind,
    description: str | None,
    description_args: Mapping[str, Any] | None,
    reference: str | None,
) -> NewEntry:
    """A credit (`sign` 1) or debit (-1) as asked: its kind one of `kinds`, its amount positive."""
    if kind not in kinds:
        raise ValueError(f"{name} kind must be one of {sorted(kinds)}, got {kind!r}")
    require_positive(amount)
    return NewEntry(
        user_id=user_id,
        kind=kind,
        delta=sign * amount,
        key=key,
        description=description or DEFAULT_DESCRIPTIONS[kind],
        description_args=description_args,
        reference=reference,
    )
