"""Holds: one hold entry each, resolved at most once by the entry its status and split call for."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from aisha.billing.models import CreditEntry, CreditHold, EntryKind, HoldStatus

_RESOLUTION_KINDS = (EntryKind.CAPTURE, EntryKind.RELEASE)
_HOLD_KINDS = (EntryKind.HOLD, *_RESOLUTION_KINDS)
_RELEASED = (HoldStatus.RELEASED, HoldStatus.EXPIRED)  # both are resolved by a release entry


def _count(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _total(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, CreditEntry.amount), else_=0)), 0)


def _per_hold() -> Any:
    """The entries of each hold, summed up: one GROUP BY over the entries that point at a hold."""
    kind = CreditEntry.kind
    return (
        select(
            CreditEntry.hold_id.label("hold_id"),
            _count(kind == EntryKind.HOLD).label("hold_entries"),
            _total(kind == EntryKind.HOLD).label("held"),
            _count(kind == EntryKind.CAPTURE).label("captures"),
            _count(kind == EntryKind.RELEASE).label("releases"),
            _total(kind.in_(_RESOLUTION_KINDS)).label("returned"),
            _count(kind.not_in(_HOLD_KINDS)).label("others"),
            func.min(CreditEntry.user_id).label("min_user"),
            func.max(CreditEntry.user_id).label("max_user"),
        )
        .where(CreditEntry.hold_id.is_not(None))
        .group_by(CreditEntry.hold_id)
        .subquery()
    )


@dataclass(frozen=True, slots=True)
class _HoldRow:
    id: uuid.UUID
    user_id: int
    amount: int
    captured: int
    status: HoldStatus
    hold_entries: int
    held: int  # signed sum of its hold entries: -amount when right
    captures: int
    releases: int
    returned: int  # signed sum of its capture and release entries
    others: int  # entries of other kinds pointing at it
    min_user: int
    max_user: int

    @property
    def resolutions(self) -> int:
        return self.captures + self.releases


async def hold_problems(session: AsyncSession) -> list[tuple[int, str]]:
    """Every hold not in one of the normal shapes, explained; then entries without their hold and
    accounts whose active holds don't add up to what their entries still hold."""
    per_hold = _per_hold()
    problems: list[tuple[int, str]] = []
    for row in await session.execute(_abnormal_holds(per_hold)):
        hold = _HoldRow(
            id=row[0],
            user_id=int(row[1]),
            amount=int(row[2]),
            captured=int(row[3]),
            status=HoldStatus(row[4]),
            hold_entries=int(row[5]),
            held=int(row[6]),
            captures=int(row[7]),
            releases=int(row[8]),
            returned=int(row[9]),
            others=int(row[10]),
            min_user=int(row[11]),
            max_user=int(row[12]),
        )
        named = f"hold {hold.id} ({hold.status.value}, {hold.captured} of {hold.amount} captured)"
        found = list(_explain_hold(hold)) or ["doesn't match its entries"]
        problems.extend((hold.user_id, f"{named}: {what}") for what in found)

    problems.extend(await _entries_without_hold(session))
    problems.extend(await _held_per_account(session, per_hold))
    return problems


def _abnormal_holds(per_hold: Any) -> Any:
    """The holds (with their entries' figures, in _HoldRow's order) not in a normal shape."""
    # A hold without any entry has no row in per_hold: zeros, and no foreign account.
    hold_entries, held, captures, releases, returned, others = (
        func.coalesce(column, 0)
        for column in (
            per_hold.c.hold_entries,
            per_hold.c.held,
            per_hold.c.captures,
            per_hold.c.releases,
            per_hold.c.returned,
            per_hold.c.others,
        )
    )
    min_user = func.coalesce(per_hold.c.min_user, CreditHold.user_id)
    max_user = func.coalesce(per_hold.c.max_user, CreditHold.user_id)
    status = CreditHold.status
    normal = and_(
        hold_entries == 1,
        held == -CreditHold.amount,
        others == 0,
        min_user == CreditHold.user_id,
        max_user == CreditHold.user_id,
        or_(
            and_(status == HoldStatus.ACTIVE, captures + releases == 0, CreditHold.captured_amount == 0),
            and_(
                status == HoldStatus.CAPTURED,
                captures == 1,
                releases == 0,
                returned == CreditHold.amount - CreditHold.captured_amount,
            ),
            and_(
                status.in_(_RELEASED),
                captures == 0,
                releases == 1,
                CreditHold.captured_amount == 0,
                returned == CreditHold.amount,
            ),
        ),
    )
    return (
        select(
            CreditHold.id,
            CreditHold.user_id,
            CreditHold.amount,
            CreditHold.captured_amount,
            CreditHold.status,
            hold_entries,
            held,
            captures,
            releases,
            returned,
            others,
            min_user,
            max_user,
        )
        .outerjoin(per_hold, per_hold.c.hold_id == CreditHold.id)
        .where(not_(normal))
        .order_by(CreditHold.user_id, CreditHold.id)
    )


def _explain_hold(hold: _HoldRow) -> Iterator[str]:
    """What is wrong with a hold SQL flagged, one phrase per rule it breaks."""
    if hold.hold_entries != 1:
        yield f"{hold.hold_entries} hold entries, expected 1"
    elif hold.held != -hold.amount:
        yield f"hold entry of {hold.held:+d}, expected {-hold.amount:+d}"
    if hold.others:
        yield f"{hold.others} entries of other kinds point at it"
    if hold.min_user != hold.user_id or hold.max_user != hold.user_id:
        yield "has entries on another account"
    if hold.status is not HoldStatus.CAPTURED and hold.captured:
        yield f"{hold.status.value} with {hold.captured} captured, expected 0"

    expected_kind = _resolution_kind(hold.status)
    if expected_kind is None:  # active
        if hold.resolutions:
            yield f"active, but resolved by {_resolutionentries_word(hold)}"
        return
    if hold.resolutions == 0:
        yield f"{hold.status.value}, but has no {expected_kind.value} entry"
        return
    if hold.resolutions > 1:
        yield f"resolved {hold.resolutions} times ({_resolutionentries_word(hold)}), expected once"
        return
    wrong_kind = hold.releases if expected_kind is EntryKind.CAPTURE else hold.captures
    if wrong_kind:
        yield f"{hold.status.value}, but resolved by {_resolutionentries_word(hold)}"
    expected_return = hold.amount - hold.captured
    if hold.returned != expected_return:
        yield f"resolution entry returns {hold.returned:+d}, the hold's split returns {expected_return:+d}"


def _resolution_kind(status: HoldStatus) -> EntryKind | None:
    """The entry kind that resolves a hold in this status; None for an active hold."""
    if status is HoldStatus.CAPTURED:
        return EntryKind.CAPTURE
    if status in _RELEASED:
        return EntryKind.RELEASE
    return None


def _resolutionentries_word(hold: _HoldRow) -> str:
    parts = [f"{hold.captures} capture"] if hold.captures else []
    parts += [f"{hold.releases} release"] if hold.releases else []
    return " and ".join(parts) + entries_word(hold.resolutions)


def entries_word(count: int) -> str:
    return " entry" if count == 1 else " entries"


async def _entries_without_hold(session: AsyncSession) -> list[tuple[int, str]]:
    """Hold, capture and release entries whose hold is missing (hold_id NULL or pointing nowhere)."""
    rows = await session.execute(
        select(CreditEntry.user_id, CreditEntry.kind, func.count(), func.sum(CreditEntry.amount))
        .outerjoin(CreditHold, CreditHold.id == CreditEntry.hold_id)
        .where(CreditEntry.kind.in_(_HOLD_KINDS), CreditHold.id.is_(None))
        .group_by(CreditEntry.user_id, CreditEntry.kind)
        .order_by(CreditEntry.user_id, CreditEntry.kind)
    )
    return [
        (
            int(user_id),
            f"{count} {EntryKind(kind).value}{entries_word(count)} ({int(amount):+d}) without their hold",
        )
        for user_id, kind, count, amount in rows
    ]


async def _held_per_account(session: AsyncSession, per_hold: Any) -> list[tuple[int, str]]:
    """Per account: the active holds add up to what the entries still hold.

    No account column keeps a held figure, so `held_total` (the active holds) is compared with
    the entries' own figure: the hold entries of holds that no capture or release entry resolved.
    """
    unresolved = func.coalesce(per_hold.c.captures, 0) + func.coalesce(per_hold.c.releases, 0) == 0
    active = func.sum(case((CreditHold.status == HoldStatus.ACTIVE, CreditHold.amount), else_=0))
    still_held = func.sum(case((unresolved, -func.coalesce(per_hold.c.held, 0)), else_=0))
    rows = await session.execute(
        select(CreditHold.user_id, active, still_held)
        .outerjoin(per_hold, per_hold.c.hold_id == CreditHold.id)
        .group_by(CreditHold.user_id)
        .having(active != still_held)
        .order_by(CreditHold.user_id)
    )
    return [
        (int(user_id), f"active holds total {int(holds)}, but the entries still hold {int(entries)}")
        for user_id, holds, entries in rows
    ]
