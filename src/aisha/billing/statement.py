"""The user's history as a statement: one line per operation, not one per ledger entry.

A paid job writes a hold, then a capture or a release (a transcription whose real length exceeds
the header's writes a second hold for it); all of these share the job's `reference`. Here they fold
into one operation with the amount it finally moved, or holds now while it runs. Every other entry
(bonus, top-up, refund, adjustment, charge) is an operation of its own. Read-side only: the ledger
and its entries stay as they are, and the operator can still read them raw (`LedgerService.history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    String,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.models import CreditAccount, CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.billing.results import HISTORY_COLUMNS, HistoryItem

FOLDED_KINDS = (EntryKind.HOLD, EntryKind.CAPTURE, EntryKind.RELEASE)


class OperationState(StrEnum):
    DONE = "done"  # an entry of its own, or a job that spent what it shows
    PENDING = "pending"  # a job still running: its credits are held
    REFUNDED = "refunded"  # a job that spent nothing: every credit it held came back


@dataclass(frozen=True, slots=True)
class Operation:
    started_at: datetime
    # What it moved in the end (signed), or holds now while it is pending.
    amount: int
    state: OperationState
    # The operation's name: the newest hold's for a job (with the arguments its resolution added,
    # e.g. the images delivered), else the entry's own.
    description: str
    description_args: dict[str, Any]
    kind: EntryKind  # the first entry's: HOLD for a job
    entries: tuple[HistoryItem, ...] = field(repr=False)  # oldest first


@dataclass(frozen=True, slots=True)
class StatementPage:
    operations: list[Operation]
    total: int  # operations, not entries
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.operations) < self.total


@dataclass(frozen=True, slots=True)
class AccountView:
    """What /balance shows: the spendable balance, the credits held, one page of the statement."""

    balance: int
    held: int
    page: StatementPage


async def account_view(session: AsyncSession, *, user_id: int, limit: int, offset: int) -> AccountView:
    """The balance, the credits held by running jobs and one statement page (newest first), read
    in one statement (the same on PostgreSQL and SQLite)."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be >= 1 and offset >= 0")
    # Core on the session's connection: nothing here for the ORM to do (plain rows, no objects;
    # no autoflush either: the ledger writes with statements of its own, never pending objects).
    connection = await session.connection()
    rows = (await connection.execute(_ACCOUNT, {"user_id": user_id, "limit": limit, "offset": offset})).all()
    first = rows[0]  # the figures' row is always there, with no entry when the page is empty
    grouped: dict[str, list[HistoryItem]] = {}
    for row in rows:
        if row.operation is not None:
            grouped.setdefault(row.operation, []).append(HistoryItem.of(row))
    page = StatementPage(
        operations=[fold(entries) for entries in grouped.values()],
        total=int(first.total or 0),
        limit=limit,
        offset=offset,
    )
    return AccountView(balance=int(first.balance or 0), held=int(first.held or 0), page=page)


async def statement(
    session: AsyncSession, *, user_id: int, limit: int = 10, offset: int = 0
) -> StatementPage:
    """One page of the user's operations, newest first (by when each started), with their count."""
    return (await account_view(session, user_id=user_id, limit=limit, offset=offset)).page


def _operation_key(entry: Any) -> Any:
    """The job's reference for its hold, capture and release entries; the seq for any other entry."""
    # The kinds written into the SQL: no parameters to convert on each execution, and a plan
    # that knows them (a list of values would be an "expanding" IN, rendered again each time).
    kinds = [_constant(kind) for kind in FOLDED_KINDS]
    folded = entry.c.kind.in_(kinds) & entry.c.reference.is_not(None)
    return case((folded, entry.c.reference), else_=cast(entry.c.seq, String))


def _constant(value: StrEnum) -> Any:
    """An enum's value as an SQL string literal (ours are plain words: nothing to escape)."""
    if not value.value.isidentifier():
        raise ValueError(f"not a plain word: {value.value!r}")
    return literal_column(f"'{value.value}'", String)


def _account_statement() -> Select[Any]:
    """What /balance reads, built once: one row per entry of the page's operations (the page's
    newest operation first, each one's entries oldest first), each carrying the balance, the
    credits held and the count of operations; one row with these alone when the page is empty.

    An operation is the entries sharing a key (`_operation_key`), placed by its first entry.
    """
    user = bindparam("user_id", type_=BigInteger)  # Telegram's ids outgrow 32 bits
    entry = CreditEntry.__table__
    columns = [entry.c[c.key] for c in HISTORY_COLUMNS]
    # The user's entries, each with its operation's key (computed once, so it groups as itself).
    keyed = (
        select(_operation_key(entry).label("operation"), entry.c.seq, *columns)
        .where(entry.c.user_id == user)
        .cte("keyed")
    )
    operations = (
        select(keyed.c.operation, func.min(keyed.c.seq).label("first_seq"))
        .group_by(keyed.c.operation)
        .cte("operations")
    )
    page = (
        select(operations.c.operation, operations.c.first_seq)
        .order_by(operations.c.first_seq.desc())
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
        .subquery("page")
    )
    lines = (
        select(page.c.first_seq, keyed)
        .select_from(page.join(keyed, keyed.c.operation == page.c.operation))
        .subquery("lines")
    )
    figures = select(
        select(CreditAccount.balance).where(CreditAccount.user_id == user).scalar_subquery().label("balance"),
        # A sum of bigints is a numeric on PostgreSQL: read back as an int, not a Decimal.
        select(cast(func.coalesce(func.sum(CreditHold.amount), literal_column("0")), BigInteger))
        .where(CreditHold.user_id == user, CreditHold.status == _constant(HoldStatus.ACTIVE))
        .scalar_subquery()
        .label("held"),
        select(func.count()).select_from(operations).scalar_subquery().label("total"),
    ).subquery("figures")
    return (
        select(figures, lines.c.operation, *(lines.c[c.key] for c in HISTORY_COLUMNS))
        .select_from(figures.outerjoin(lines, true()))
        .order_by(lines.c.first_seq.desc(), lines.c.seq)
    )


_ACCOUNT = _account_statement()


def fold(entries: list[HistoryItem]) -> Operation:
    """One operation from its entries, oldest first."""
    first = entries[0]
    holds = [e for e in entries if e.kind is EntryKind.HOLD]
    if not holds:  # a single entry of its own (or resolutions whose hold is gone)
        return Operation(
            started_at=first.created_at,
            amount=sum(e.amount for e in entries),
            state=OperationState.DONE,
            description=first.description,
            description_args=first.description_args,
            kind=first.kind,
            entries=tuple(entries),
        )
    resolutions = len(entries) - len(holds)
    amount = sum(e.amount for e in entries)
    if resolutions < len(holds):
        state = OperationState.PENDING
    elif amount == 0:
        state = OperationState.REFUNDED
    else:
        state = OperationState.DONE
    args: dict[str, Any] = {}
    for entry in entries:  # later entries know more: the real length, the images delivered
        args.update(entry.description_args)
    return Operation(
        started_at=first.created_at,
        amount=amount,
        state=state,
        description=holds[-1].description,
        description_args=args,
        kind=first.kind,
        entries=tuple(entries),
    )
