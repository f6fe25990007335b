"""The ledger's rows, read and written the portable way (any dialect, inside a SAVEPOINT).

`LedgerService` and `billing/holds.py` use these after the one-statement PostgreSQL path
(`billing/pg.py`) wrote nothing, and on SQLite: `move` then `insert_entry` in one savepoint is how
an entry moves the balance; the replay helpers turn a stored entry back into the first result of
its key, or an IdempotencyConflict.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import BindParameter, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import ids
from aisha.billing.errors import IdempotencyConflict, InsufficientCredits, InvalidAmount
from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.billing.results import HISTORY_COLUMNS, EntryResult, HoldInfo, HoldResult, ResolutionResult
from aisha.clock import Clock
from aisha.db.upsert import insert_ignore

MAX_KEY_LENGTH = 160
MAX_DESCRIPTION_LENGTH = 64
MAX_REFERENCE_LENGTH = 128

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class StoredEntry:
    id: uuid.UUID
    user_id: int
    kind: EntryKind
    amount: int
    balance_after: int
    hold_id: uuid.UUID | None


class HoldLost(Exception):
    """Internal: the conditional hold UPDATE matched nothing (resolved concurrently)."""


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry without a hold, as asked: the balance moves by `delta` (signed)."""

    user_id: int
    kind: EntryKind
    delta: int
    key: str
    description: str
    description_args: Mapping[str, Any] | None
    reference: str | None


@dataclass(frozen=True, slots=True)
class NewHold:
    """A hold as asked: `amount` (positive) leaves the balance until the hold is resolved."""

    user_id: int
    amount: int
    key: str
    reference: str
    description: str
    description_args: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """A capture, release or expiry as asked: `spend` of the held amount is spent, the rest returned."""

    hold_id: uuid.UUID
    target: HoldStatus
    spend: int
    key: str
    description: str
    description_args: Mapping[str, Any] | None

    @property
    def kind(self) -> EntryKind:
        return EntryKind.CAPTURE if self.target is HoldStatus.CAPTURED else EntryKind.RELEASE


class Books:
    """The account, entry and hold rows of one clock's ledger."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def write_once(
        self,
        session: AsyncSession,
        *,
        key: str,
        one_statement: Callable[[], Awaitable[R | None]],
        write: Callable[[], Awaitable[R]],
        replay: Callable[[StoredEntry], R],
    ) -> R:
        """The shape of every operation under an idempotency key.

        On PostgreSQL `one_statement` (`billing/pg.py`) first: its result, or None when it wrote
        nothing (key used, credits short, no account yet). Then the portable path: the entry stored
        under `key` is replayed; else `write` runs in a SAVEPOINT. A write that lost a race (on
        PostgreSQL a concurrent insert of this key waited for the other transaction and then
        conflicted, or found the credits already gone) replays the winner's entry: it is ours.
        """
        if on_postgresql(session):
            result = await one_statement()
            if result is not None:
                return result
        stored = await self.stored_entry(session, key)
        if stored is not None:
            return replay(stored)
        try:
            async with session.begin_nested():
                return await write()
        except (IntegrityError, InsufficientCredits):
            stored = await self.stored_entry(session, key)
            if stored is None:
                raise
            return replay(stored)

    async def write_entry(self, session: AsyncSession, entry: NewEntry) -> EntryResult:
        """The portable entry without a hold, inside the caller's savepoint."""
        balance, seq = await self.move(session, user_id=entry.user_id, delta=entry.delta)
        entry_id = await self.insert_entry(
            session,
            user_id=entry.user_id,
            kind=entry.kind,
            amount=entry.delta,
            balance_after=balance,
            seq=seq,
            hold_id=None,
            reference=entry.reference,
            description=entry.description,
            description_args=entry.description_args,
            key=entry.key,
            now=self._clock.now(),
        )
        return EntryResult(entry_id=entry_id, balance=balance, amount=entry.delta, replayed=False)

    async def ensure_account(self, *, session: AsyncSession, user_id: int) -> None:
        """Create the user's account with balance 0 unless it exists (the user row must exist)."""
        await insert_ignore(
            session,
            cast(Table, CreditAccount.__table__),
            {"user_id": user_id, "balance": 0, "updated_at": self._clock.now()},
            conflict_columns=["user_id"],
        )

    async def move(self, session: AsyncSession, *, user_id: int, delta: int) -> tuple[int, int]:
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

    async def insert_entry(
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
        """Write an entry; only right after `move` (same savepoint), with the balance and seq
        it returned."""
        entry_id = ids.ordered_uuid()
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

    async def stored_entry(self, session: AsyncSession, key: str) -> StoredEntry | None:
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
        return StoredEntry(
            id=row.id,
            user_id=row.user_id,
            kind=row.kind,
            amount=row.amount,
            balance_after=row.balance_after,
            hold_id=row.hold_id,
        )

    async def hold_and_entry(
        self, session: AsyncSession, hold_id: uuid.UUID, key: str
    ) -> tuple[HoldInfo | None, StoredEntry | None]:
        """The hold and the entry already stored under `key`, in one round trip."""
        row = (
            await session.execute(
                select(
                    *HOLD_COLUMNS,
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
            stored = StoredEntry(
                id=row.entry_id,
                user_id=row.entry_user_id,
                kind=row.entry_kind,
                amount=row.entry_amount,
                balance_after=row.entry_balance_after,
                hold_id=row.entry_hold_id,
            )
        return hold_from_row(row), stored

    async def hold_info(self, session: AsyncSession, hold_id: uuid.UUID) -> HoldInfo | None:
        # Plain columns, not ORM objects: the identity map would serve a stale status after our
        # Core UPDATEs within the same session.
        row = (await session.execute(select(*HOLD_COLUMNS).where(CreditHold.id == hold_id))).first()
        return None if row is None else hold_from_row(row)


HOLD_COLUMNS = (
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


def hold_from_row(row: Any) -> HoldInfo:
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


def on_postgresql(session: AsyncSession) -> bool:
    """Whether the one-statement operations of `billing/pg.py` apply (SQLite: the portable path)."""
    return session.get_bind().dialect.name == "postgresql"


def is_amount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_positive(amount: int) -> None:
    if not is_amount(amount) or amount <= 0:
        raise InvalidAmount(f"amount must be a positive integer, got {amount!r}")


def check_texts(*, key: str, description: str, reference: str | None) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters")
    if not description or len(description) > MAX_DESCRIPTION_LENGTH:
        raise ValueError(f"description must be a locale key of 1..{MAX_DESCRIPTION_LENGTH} characters")
    if reference is not None and len(reference) > MAX_REFERENCE_LENGTH:
        raise ValueError(f"reference must be at most {MAX_REFERENCE_LENGTH} characters")


def conflict_reason(stored: StoredEntry, *, user_id: int, kind: EntryKind, amount: int | None) -> str | None:
    if stored.user_id != user_id:
        return "another user"
    if stored.kind != kind:
        return f"kind {stored.kind.value}, not {kind.value}"
    if amount is not None and stored.amount != amount:
        return f"amount {stored.amount}, not {amount}"
    return None


def replay_entry(
    stored: StoredEntry, *, key: str, user_id: int, kind: EntryKind, amount: int | None
) -> EntryResult:
    reason = conflict_reason(stored, user_id=user_id, kind=kind, amount=amount)
    if reason is not None:
        raise IdempotencyConflict(key=key, reason=reason)
    return EntryResult(entry_id=stored.id, balance=stored.balance_after, amount=stored.amount, replayed=True)


def replay_hold(stored: StoredEntry, *, key: str, user_id: int, amount: int) -> HoldResult:
    reason = conflict_reason(stored, user_id=user_id, kind=EntryKind.HOLD, amount=-amount)
    if reason is None and stored.hold_id is None:
        reason = "the hold is gone"
    if reason is not None:
        raise IdempotencyConflict(key=key, reason=reason)
    assert stored.hold_id is not None
    return HoldResult(hold_id=stored.hold_id, amount=amount, balance=stored.balance_after, replayed=True)


def replay_resolution(
    stored: StoredEntry, *, hold: HoldInfo, key: str, kind: EntryKind, returned: int
) -> ResolutionResult:
    reason = conflict_reason(stored, user_id=hold.user_id, kind=kind, amount=returned)
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


# What /balance shows, built once (it runs on every /balance): the figures as scalar subqueries,
# riding along each entry of the page, or alone when the page is empty.
_OVERVIEW_USER: BindParameter[int] = bindparam("user_id")
_OVERVIEW_FIGURE_COLUMNS = (
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
OVERVIEW_FIGURES = select(*_OVERVIEW_FIGURE_COLUMNS)
OVERVIEW_PAGE = (
    select(*HISTORY_COLUMNS, *_OVERVIEW_FIGURE_COLUMNS)
    .where(CreditEntry.user_id == _OVERVIEW_USER)
    .order_by(CreditEntry.seq.desc())
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
)
