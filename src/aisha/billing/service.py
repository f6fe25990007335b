"""The credit ledger rules: balances, immutable entries, two-phase holds, idempotency.

Every method runs inside the caller's transaction (`session`) and never commits. Each operation
writes its entry and moves the cached balance together, so that a refused or duplicated operation
leaves nothing behind while the caller's other work stays: on PostgreSQL in one statement
(`billing/pg.py`: the entry's unique key is the gate, no savepoint), and when that statement writes
nothing, or on SQLite, by the portable path here (a pre-read, then the writes in a SAVEPOINT),
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

`aisha ledger verify` (`billing/verify.py`) checks all of these on the stored books, and that
each Stars payment was credited once and each refunded one debited once.

Lock order is always "account row, then hold row", so transactions that each touch one account
never deadlock each other; a unit of work spanning several accounts should lock them in user order.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import BindParameter, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import pg
from aisha.billing.errors import (
    HoldAlreadyResolved,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
)
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.clock import Clock
from aisha.db.upsert import insert_ignore

MAX_KEY_LENGTH = 160
MAX_DESCRIPTION_LENGTH = 64
MAX_REFERENCE_LENGTH = 128

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
EXPIRED_DESCRIPTION = "ledger.hold_expired"


# --- results -----------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class _StoredEntry:
    id: uuid.UUID
    user_id: int
    kind: EntryKind
    amount: int
    balance_after: int
    hold_id: uuid.UUID | None


class _HoldLost(Exception):
    """Internal: the conditional hold UPDATE matched nothing (resolved concurrently)."""


# --- ordered ids -------------------------------------------------------------------------------

_id_lock = threading.Lock()
_id_state = (0, 0)  # (milliseconds, counter) of the last id


def ordered_uuid() -> uuid.UUID:
    """A UUIDv7: wall-clock milliseconds, then a counter; increasing within a process.

    Entries and holds written in one millisecond still get ids in the order they were written
    (in this process). The ledger's own order is each entry's `seq`, not its id or timestamp.
    """
    global _id_state
    now_ms = time.time_ns() // 1_000_000
    with _id_lock:
        last_ms, last_counter = _id_state
        if now_ms > last_ms:
            state = (now_ms, secrets.randbits(72))  # headroom below 2**74 for increments
        elif last_counter + 1 < 1 << 74:
            state = (last_ms, last_counter + 1)
        else:
            state = (last_ms + 1, 0)
        _id_state = state
    ms, counter = state
    value = (ms << 80) | (0x7 << 76) | ((counter >> 62) << 64) | (0b10 << 62) | (counter & ((1 << 62) - 1))
    return uuid.UUID(int=value)


# --- the service -------------------------------------------------------------------------------


class LedgerService:
    def __init__(self, *, clock: Clock, hold_ttl: timedelta) -> None:
        if hold_ttl <= timedelta(0):
            raise ValueError("hold_ttl must be positive")
        self._clock = clock
        self._hold_ttl = hold_ttl

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def hold_ttl(self) -> timedelta:
        return self._hold_ttl

    # --- accounts ------------------------------------------------------------------------------

    async def ensure_account(self, *, session: AsyncSession, user_id: int) -> None:
        """Create the user's account with balance 0 unless it exists (the user row must exist)."""
        await insert_ignore(
            session,
            cast(Table, CreditAccount.__table__),
            {"user_id": user_id, "balance": 0, "updated_at": self._clock.now()},
            conflict_columns=["user_id"],
        )

    async def stored_entry(self, *, session: AsyncSession, key: str) -> EntryResult | None:
        """The entry written under an idempotency key, as a replayed result; None if none."""
        stored = await self._stored_entry(session, key)
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
        if kind not in CREDIT_KINDS:
            raise ValueError(f"credit kind must be one of {sorted(CREDIT_KINDS)}, got {kind!r}")
        _require_positive(amount)
        return await self._apply(
            session,
            user_id=user_id,
            kind=kind,
            delta=amount,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[kind],
            description_args=description_args,
            reference=reference,
        )

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
        if kind not in DEBIT_KINDS:
            raise ValueError(f"debit kind must be one of {sorted(DEBIT_KINDS)}, got {kind!r}")
        _require_positive(amount)
        return await self._apply(
            session,
            user_id=user_id,
            kind=kind,
            delta=-amount,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[kind],
            description_args=description_args,
            reference=reference,
        )

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
        return await self._apply(
            session,
            user_id=user_id,
            kind=EntryKind.ADJUSTMENT,
            delta=amount,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[EntryKind.ADJUSTMENT],
            description_args=description_args,
            reference=reference,
        )

    async def grant_welcome_bonus(
        self, *, session: AsyncSession, user_id: int, amount: int
    ) -> EntryResult | None:
        """The welcome bonus, once per user; None when the bonus is 0 (nothing is written)."""
        if amount < 0:
            raise InvalidAmount(f"welcome bonus can't be negative, got {amount}")
        if amount == 0:
            return None
        return await self._apply(
            session,
            user_id=user_id,
            kind=EntryKind.BONUS,
            delta=amount,
            key=f"welcome:{user_id}",
            description=WELCOME_DESCRIPTION,
            description_args={"amount": amount},
            reference=None,
            # The operator may change the bonus later; a user who had one keeps the first.
            check_amount=False,
        )

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
        _require_positive(amount)
        description = description or DEFAULT_DESCRIPTIONS[EntryKind.HOLD]
        _check_texts(key=key, description=description, reference=reference)
        if _on_postgresql(session):
            now = self._clock.now()
            hold_id = ordered_uuid()  # time-ordered: the expiry sweep takes the oldest first
            balance = await pg.hold(
                session,
                entry_id=ordered_uuid(),
                hold_id=hold_id,
                user_id=user_id,
                amount=amount,
                key=key,
                reference=reference,
                description=description,
                description_args=description_args,
                now=now,
                expires_at=now + self._hold_ttl,
            )
            if balance is not None:
                return HoldResult(hold_id=hold_id, amount=amount, balance=balance, replayed=False)
            # Nothing written: the portable path below replays the key or says why not.
        stored = await self._stored_entry(session, key)
        if stored is not None:
            return _replay_hold(stored, key=key, user_id=user_id, amount=amount)
        try:
            async with session.begin_nested():
                balance, seq = await self._move(session, user_id=user_id, delta=-amount)
                now = self._clock.now()
                hold_id = ordered_uuid()  # time-ordered: the expiry sweep takes the oldest first
                await session.execute(
                    insert(CreditHold).values(
                        id=hold_id,
                        user_id=user_id,
                        amount=amount,
                        captured_amount=0,
                        status=HoldStatus.ACTIVE,
                        reference=reference,
                        description=description,
                        expires_at=now + self._hold_ttl,
                        created_at=now,
                        resolved_at=None,
                    )
                )
                await self._insert_entry(
                    session,
                    user_id=user_id,
                    kind=EntryKind.HOLD,
                    amount=-amount,
                    balance_after=balance,
                    seq=seq,
                    hold_id=hold_id,
                    reference=reference,
                    description=description,
                    description_args=description_args,
                    key=key,
                    now=now,
                )
        except (IntegrityError, InsufficientCredits):
            # A concurrent call with the same key may have committed first: its result is ours.
            stored = await self._stored_entry(session, key)
            if stored is None:
                raise
            return _replay_hold(stored, key=key, user_id=user_id, amount=amount)
        return HoldResult(hold_id=hold_id, amount=amount, balance=balance, replayed=False)

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
        return await self._resolve(
            session,
            hold_id=hold_id,
            target=HoldStatus.CAPTURED,
            spend=amount,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[EntryKind.CAPTURE],
            description_args=description_args,
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
        return await self._resolve(
            session,
            hold_id=hold_id,
            target=HoldStatus.RELEASED,
            spend=0,
            key=key,
            description=description or DEFAULT_DESCRIPTIONS[EntryKind.RELEASE],
            description_args=description_args,
        )

    async def expire_holds(self, *, session: AsyncSession, limit: int = 100) -> list[ResolutionResult]:
        """Release the active holds whose time is up (the recovery sweep); returns what it did.

        A hold captured or released meanwhile is skipped. Call it again while it returns `limit`
        results; each call may run in its own short transaction.
        """
        now = self._clock.now()
        hold_ids = (
            await session.scalars(
                select(CreditHold.id)
                .where(CreditHold.status == HoldStatus.ACTIVE, CreditHold.expires_at <= now)
                # Accounts locked in one order by every sweep: concurrent sweeps can't deadlock.
                .order_by(CreditHold.user_id, CreditHold.id)
                .limit(limit)
            )
        ).all()
        results: list[ResolutionResult] = []
        for hold_id in hold_ids:
            try:
                result = await self._resolve(
                    session,
                    hold_id=hold_id,
                    target=HoldStatus.EXPIRED,
                    spend=0,
                    key=f"hold:{hold_id}:expire",
                    description=EXPIRED_DESCRIPTION,
                    description_args=None,
                )
            except (HoldAlreadyResolved, HoldNotFound):
                continue
            if not result.replayed:
                results.append(result)
        return results

    # --- queries -------------------------------------------------------------------------------

    async def get_hold(self, *, session: AsyncSession, hold_id: uuid.UUID) -> HoldInfo | None:
        return await self._hold_info(session, hold_id)

    async def active_holds(self, *, session: AsyncSession, user_id: int) -> list[HoldInfo]:
        rows = await session.execute(
            select(*_HOLD_COLUMNS)
            .where(CreditHold.user_id == user_id, CreditHold.status == HoldStatus.ACTIVE)
            .order_by(CreditHold.created_at, CreditHold.id)
        )
        return [_hold_from_row(row) for row in rows]

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
        rows = (await session.execute(_OVERVIEW_PAGE, params)).all()
        first = rows[0] if rows else (await session.execute(_OVERVIEW_FIGURES, params)).one()
        items = [HistoryItem.of(row) for row in rows]
        return Overview(
            balance=int(first.balance or 0),
            held=int(first.held or 0),
            page=HistoryPage(items=items, total=int(first.total or 0), limit=limit, offset=offset),
        )

    async def verify_all(self, *, session: AsyncSession) -> list[AccountMismatch]:
        """Every account whose books are wrong: balances and the balance_after chain, holds
        resolved once with matching amounts, payments credited (and refunded) once. Empty when
        the books are right. The checks live in `billing/verify.py`."""
        # Imported here: verify.py uses payments.py, which imports this module.
        from aisha.billing.verify import verify_ledger

        return await verify_ledger(session)

    # --- internals -----------------------------------------------------------------------------

    async def _apply(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        kind: EntryKind,
        delta: int,
        key: str,
        description: str,
        description_args: Mapping[str, Any] | None,
        reference: str | None,
        check_amount: bool = True,
    ) -> EntryResult:
        """One entry without a hold: move the balance by `delta` and record it, once per key."""
        _check_texts(key=key, description=description, reference=reference)
        if _on_postgresql(session):
            entry_id = ordered_uuid()
            balance = await pg.apply(
                session,
                entry_id=entry_id,
                user_id=user_id,
                kind=kind,
                delta=delta,
                key=key,
                description=description,
                description_args=description_args,
                reference=reference,
                now=self._clock.now(),
            )
            if balance is not None:
                return EntryResult(entry_id=entry_id, balance=balance, amount=delta, replayed=False)
            # Nothing written (key used, credits short, no account yet): the portable path below
            # replays, raises or creates the account.
        stored = await self._stored_entry(session, key)
        if stored is not None:
            return _replay_entry(
                stored, key=key, user_id=user_id, kind=kind, amount=delta if check_amount else None
            )
        try:
            async with session.begin_nested():
                balance, seq = await self._move(session, user_id=user_id, delta=delta)
                entry_id = await self._insert_entry(
                    session,
                    user_id=user_id,
                    kind=kind,
                    amount=delta,
                    balance_after=balance,
                    seq=seq,
                    hold_id=None,
                    reference=reference,
                    description=description,
                    description_args=description_args,
                    key=key,
                    now=self._clock.now(),
                )
        except (IntegrityError, InsufficientCredits):
            # On PostgreSQL a concurrent insert of this key waited for the other transaction and
            # then conflicted (or found the credits already gone): the stored result is ours.
            stored = await self._stored_entry(session, key)
            if stored is None:
                raise
            return _replay_entry(
                stored, key=key, user_id=user_id, kind=kind, amount=delta if check_amount else None
            )
        return EntryResult(entry_id=entry_id, balance=balance, amount=delta, replayed=False)

    async def _resolve(
        self,
        session: AsyncSession,
        *,
        hold_id: uuid.UUID,
        target: HoldStatus,
        spend: int,
        key: str,
        description: str,
        description_args: Mapping[str, Any] | None,
    ) -> ResolutionResult:
        """Capture, release or expire a hold: the conditional UPDATE lets exactly one win."""
        _check_texts(key=key, description=description, reference=None)
        kind = EntryKind.CAPTURE if target is HoldStatus.CAPTURED else EntryKind.RELEASE
        if _on_postgresql(session) and _is_amount(spend) and spend >= 0:
            entry_id = ordered_uuid()
            moved = await pg.resolve(
                session,
                entry_id=entry_id,
                hold_id=hold_id,
                target=target,
                kind=kind,
                spend=spend,
                key=key,
                description=description,
                description_args=description_args,
                now=self._clock.now(),
            )
            if moved is not None:
                balance, returned = moved
                return ResolutionResult(
                    hold_id=hold_id,
                    status=target,
                    captured=spend,
                    returned=returned,
                    balance=balance,
                    entry_id=entry_id,
                    replayed=False,
                )
            # Nothing written: the portable path below replays the key or says why not.
        hold, stored = await self._hold_and_entry(session, hold_id, key)
        if hold is None:
            raise HoldNotFound(hold_id)
        if not _is_amount(spend) or not 0 <= spend <= hold.amount:
            raise InvalidAmount(f"capture must be between 0 and the held {hold.amount}, got {spend!r}")
        returned = hold.amount - spend

        if stored is not None:
            return _replay_resolution(stored, hold=hold, key=key, kind=kind, returned=returned)
        if hold.status is not HoldStatus.ACTIVE:
            raise HoldAlreadyResolved(hold_id=hold_id, status=hold.status)
        try:
            async with session.begin_nested():
                # Account first, hold second: the same lock order as hold() and every debit.
                balance, seq = await self._move(session, user_id=hold.user_id, delta=returned)
                now = self._clock.now()
                conditions = [CreditHold.id == hold_id, CreditHold.status == HoldStatus.ACTIVE]
                if target is HoldStatus.EXPIRED:
                    conditions.append(CreditHold.expires_at <= now)
                won = (
                    await session.execute(
                        update(CreditHold)
                        .where(*conditions)
                        .values(status=target, captured_amount=spend, resolved_at=now)
                        .returning(CreditHold.id)
                        .execution_options(synchronize_session=False)
                    )
                ).first()
                if won is None:
                    raise _HoldLost
                entry_id = await self._insert_entry(
                    session,
                    user_id=hold.user_id,
                    kind=kind,
                    amount=returned,
                    balance_after=balance,
                    seq=seq,
                    hold_id=hold_id,
                    reference=hold.reference,
                    description=description,
                    description_args=description_args,
                    key=key,
                    now=now,
                )
        except (IntegrityError, _HoldLost) as exc:
            # Someone resolved it first: with this key it is our first result, else an error.
            stored = await self._stored_entry(session, key)
            current = await self._hold_info(session, hold_id)
            if stored is not None and current is not None:
                return _replay_resolution(stored, hold=current, key=key, kind=kind, returned=returned)
            if isinstance(exc, _HoldLost) and current is not None:
                raise HoldAlreadyResolved(hold_id=hold_id, status=current.status) from None
            raise
        return ResolutionResult(
            hold_id=hold_id,
            status=target,
            captured=spend,
            returned=returned,
            balance=balance,
            entry_id=entry_id,
            replayed=False,
        )

    async def _move(self, session: AsyncSession, *, user_id: int, delta: int) -> tuple[int, int]:
        """Add `delta` to the balance unless it would go below zero; (new balance, entry seq).

        The condition sits in the UPDATE itself, so concurrent debits can't overdraw: on
        PostgreSQL the second one waits for the row lock and re-checks against the new balance.
        The same UPDATE bumps `last_seq`, so the entry written next (in this savepoint, still
        under the row lock) gets the account's next number: its place in the ledger's order.
        """
        statement = (
            update(CreditAccount)
            .where(CreditAccount.user_id == user_id, CreditAccount.balance + delta >= 0)
            .values(
                balance=CreditAccount.balance + delta,
                last_seq=CreditAccount.last_seq + 1,
                updated_at=self._clock.now(),
            )
            .returning(CreditAccount.balance, CreditAccount.last_seq)
            .execution_options(synchronize_session=False)
        )
        row = (await session.execute(statement)).first()
        if row is not None:
            return int(row.balance), int(row.last_seq)
        current = await session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == user_id))
        if current is None and delta >= 0:
            await self.ensure_account(session=session, user_id=user_id)
            row = (await session.execute(statement)).first()
            if row is not None:
                return int(row.balance), int(row.last_seq)
        raise InsufficientCredits(balance=current or 0, required=-delta)

    async def _insert_entry(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        kind: EntryKind,
        amount: int,
        balance_after: int,
        seq: int,
        hold_id: uuid.UUID | None,
        reference: str | None,
        description: str,
        description_args: Mapping[str, Any] | None,
        key: str,
        now: datetime,
    ) -> uuid.UUID:
        """Write an entry; only right after `_move` (same savepoint), with the balance and seq
        it returned."""
        entry_id = ordered_uuid()
        await session.execute(
            insert(CreditEntry).values(
                id=entry_id,
                user_id=user_id,
                kind=kind,
                amount=amount,
                balance_after=balance_after,
                seq=seq,
                hold_id=hold_id,
                reference=reference,
                description=description,
                description_args=dict(description_args or {}),
                idempotency_key=key,
                created_at=now,
            )
        )
        return entry_id

    async def _stored_entry(self, session: AsyncSession, key: str) -> _StoredEntry | None:
        row = (
            await session.execute(
                select(
                    CreditEntry.id,
                    CreditEntry.user_id,
                    CreditEntry.kind,
                    CreditEntry.amount,
                    CreditEntry.balance_after,
                    CreditEntry.hold_id,
                ).where(CreditEntry.idempotency_key == key)
            )
        ).first()
        if row is None:
            return None
        return _StoredEntry(
            id=row.id,
            user_id=row.user_id,
            kind=row.kind,
            amount=row.amount,
            balance_after=row.balance_after,
            hold_id=row.hold_id,
        )

    async def _hold_and_entry(
        self, session: AsyncSession, hold_id: uuid.UUID, key: str
    ) -> tuple[HoldInfo | None, _StoredEntry | None]:
        """The hold and the entry already stored under `key`, in one round trip."""
        row = (
            await session.execute(
                select(
                    *_HOLD_COLUMNS,
                    CreditEntry.id.label("entry_id"),
                    CreditEntry.user_id.label("entry_user_id"),
                    CreditEntry.kind.label("entry_kind"),
                    CreditEntry.amount.label("entry_amount"),
                    CreditEntry.balance_after.label("entry_balance_after"),
                    CreditEntry.hold_id.label("entry_hold_id"),
                )
                .outerjoin(CreditEntry, CreditEntry.idempotency_key == key)
                .where(CreditHold.id == hold_id)
            )
        ).first()
        if row is None:
            return None, None
        stored = None
        if row.entry_id is not None:
            stored = _StoredEntry(
                id=row.entry_id,
                user_id=row.entry_user_id,
                kind=row.entry_kind,
                amount=row.entry_amount,
                balance_after=row.entry_balance_after,
                hold_id=row.entry_hold_id,
            )
        return _hold_from_row(row), stored

    async def _hold_info(self, session: AsyncSession, hold_id: uuid.UUID) -> HoldInfo | None:
        # Plain columns, not ORM objects: the identity map would serve a stale status after our
        # Core UPDATEs within the same session.
        row = (await session.execute(select(*_HOLD_COLUMNS).where(CreditHold.id == hold_id))).first()
        return None if row is None else _hold_from_row(row)


# What /balance shows, built once (it runs on every /balance): the figures as scalar subqueries,
# riding along each entry of the page, or alone when the page is empty.
_OVERVIEW_USER: BindParameter[int] = bindparam("user_id")
_OVERVIEW_FIGURES_COLUMNS = (
    select(CreditAccount.balance)
    .where(CreditAccount.user_id == _OVERVIEW_USER)
    .scalar_subquery()
    .label("balance"),
    select(func.coalesce(func.sum(CreditHold.amount), 0))
    .where(CreditHold.user_id == _OVERVIEW_USER, CreditHold.status == HoldStatus.ACTIVE)
    .scalar_subquery()
    .label("held"),
    select(func.count())
    .select_from(CreditEntry)
    .where(CreditEntry.user_id == _OVERVIEW_USER)
    .scalar_subquery()
    .label("total"),
)
_OVERVIEW_FIGURES = select(*_OVERVIEW_FIGURES_COLUMNS)
_OVERVIEW_PAGE = (
    select(*HISTORY_COLUMNS, *_OVERVIEW_FIGURES_COLUMNS)
    .where(CreditEntry.user_id == _OVERVIEW_USER)
    .order_by(CreditEntry.seq.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)

_HOLD_COLUMNS = (
    CreditHold.id,
    CreditHold.user_id,
    CreditHold.amount,
    CreditHold.captured_amount,
    CreditHold.status,
    CreditHold.reference,
    CreditHold.description,
    CreditHold.expires_at,
    CreditHold.created_at,
    CreditHold.resolved_at,
)


def _hold_from_row(row: Any) -> HoldInfo:
    return HoldInfo(
        id=row.id,
        user_id=row.user_id,
        amount=row.amount,
        captured_amount=row.captured_amount,
        status=HoldStatus(row.status),
        reference=row.reference,
        description=row.description,
        expires_at=row.expires_at,
        created_at=row.created_at,
        resolved_at=row.resolved_at,
    )


def _on_postgresql(session: AsyncSession) -> bool:
    """Whether the one-statement operations of `billing/pg.py` apply (SQLite: the portable path)."""
    return session.get_bind().dialect.name == "postgresql"


def _is_amount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive(amount: int) -> None:
    if not _is_amount(amount) or amount <= 0:
        raise InvalidAmount(f"amount must be a positive integer, got {amount!r}")


def _check_texts(*, key: str, description: str, reference: str | None) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters")
    if not description or len(description) > MAX_DESCRIPTION_LENGTH:
        raise ValueError(f"description must be a locale key of 1..{MAX_DESCRIPTION_LENGTH} characters")
    if reference is not None and len(reference) > MAX_REFERENCE_LENGTH:
        raise ValueError(f"reference must be at most {MAX_REFERENCE_LENGTH} characters")


def _conflict_reason(
    stored: _StoredEntry, *, user_id: int, kind: EntryKind, amount: int | None
) -> str | None:
    if stored.user_id != user_id:
        return "another user"
    if stored.kind != kind:
        return f"kind {stored.kind.value}, not {kind.value}"
    if amount is not None and stored.amount != amount:
        return f"amount {stored.amount}, not {amount}"
    return None


def _replay_entry(
    stored: _StoredEntry, *, key: str, user_id: int, kind: EntryKind, amount: int | None
) -> EntryResult:
    reason = _conflict_reason(stored, user_id=user_id, kind=kind, amount=amount)
    if reason is not None:
        raise IdempotencyConflict(key=key, reason=reason)
    return EntryResult(entry_id=stored.id, balance=stored.balance_after, amount=stored.amount, replayed=True)


def _replay_hold(stored: _StoredEntry, *, key: str, user_id: int, amount: int) -> HoldResult:
    reason = _conflict_reason(stored, user_id=user_id, kind=EntryKind.HOLD, amount=-amount)
    if reason is None and stored.hold_id is None:
        reason = "the hold is gone"
    if reason is not None:
        raise IdempotencyConflict(key=key, reason=reason)
    assert stored.hold_id is not None
    return HoldResult(hold_id=stored.hold_id, amount=amount, balance=stored.balance_after, replayed=True)


def _replay_resolution(
    stored: _StoredEntry, *, hold: HoldInfo, key: str, kind: EntryKind, returned: int
) -> ResolutionResult:
    reason = _conflict_reason(stored, user_id=hold.user_id, kind=kind, amount=returned)
    if reason is None and stored.hold_id != hold.id:
        reason = "another hold"
    if reason is not None:
        raise IdempotencyConflict(key=key, reason=reason)
    return ResolutionResult(
        hold_id=hold.id,
        status=hold.status,
        captured=hold.captured_amount,
        returned=stored.amount,
        balance=stored.balance_after,
        entry_id=stored.id,
        replayed=True,
    )
