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

from sqlalchemy import String, case, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.results import HISTORY_COLUMNS, HistoryItem
from aisha.billing.service import LedgerService

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


async def account_view(
    session: AsyncSession, *, ledger: LedgerService, user_id: int, limit: int, offset: int
) -> AccountView:
    """The balance, the credits held by running jobs and one statement page (newest first)."""
    return AccountView(
        balance=await ledger.get_balance(session=session, user_id=user_id),
        held=await ledger.held_total(session=session, user_id=user_id),
        page=await statement(session, user_id=user_id, limit=limit, offset=offset),
    )


def _operation_key() -> Any:
    """The job's reference for its hold, capture and release entries; the seq for any other entry."""
    folded = CreditEntry.kind.in_(FOLDED_KINDS) & CreditEntry.reference.is_not(None)
    return case((folded, CreditEntry.reference), else_=cast(CreditEntry.seq, String))


async def statement(
    session: AsyncSession, *, user_id: int, limit: int = 10, offset: int = 0
) -> StatementPage:
    """One page of the user's operations, newest first (by when each started), with their count."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be >= 1 and offset >= 0")
    key = _operation_key().label("operation")
    operations = (
        select(key, func.min(CreditEntry.seq).label("first_seq"))
        .where(CreditEntry.user_id == user_id)
        .group_by(key)
        .subquery()
    )
    total = await session.scalar(select(func.count()).select_from(operations))
    keys = (
        await session.scalars(
            select(operations.c.operation).order_by(operations.c.first_seq.desc()).limit(limit).offset(offset)
        )
    ).all()
    grouped: dict[str, list[HistoryItem]] = {k: [] for k in keys}
    if keys:
        rows = await session.execute(
            select(key, *HISTORY_COLUMNS)
            .where(CreditEntry.user_id == user_id, _operation_key().in_(keys))
            .order_by(CreditEntry.seq)
        )
        for row in rows:
            grouped[row.operation].append(HistoryItem.of(row))
    return StatementPage(
        operations=[fold(entries) for entries in grouped.values() if entries],
        total=int(total or 0),
        limit=limit,
        offset=offset,
    )


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
