"""`aisha ledger verify`: proves the books add up and that no credit was invented or lost.

Three families of checks, each a few set-based queries (one pass over the entries, never one
query per entry or per account):

- balances: every account's balance equals the sum of its entries, its `last_seq` is its newest
  entry's `seq`, and each entry's `balance_after` follows from the one before it in `seq` order;
- holds: each hold has exactly one hold entry (of minus its amount) and, once resolved, exactly
  one resolution entry (a capture for a captured hold, a release for a released or expired one)
  that returns what the hold's split says (`amount - captured_amount`); an active hold has none;
  hold, capture and release entries all belong to a hold; and each account's active holds add up
  to what its entries still hold;
- payments: each payment has exactly one top-up entry of its credits (under `payment_key`), and
  each refunded one exactly one refund debit of them (under `refund_key`).

SQL finds what is wrong (holds: anything not in one of the normal shapes); Python says what, one
line per problem, so a hold that SQL flags is always reported even if no rule explains it.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, case, cast, func, literal, not_, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from aisha.billing.models import (
    CreditAccount,
    CreditEntry,
    CreditHold,
    EntryKind,
    HoldStatus,
    Payment,
    PaymentStatus,
)
from aisha.billing.payments import payment_key, refund_key
from aisha.billing.service import AccountMismatch
from aisha.db.base import parse_uuid

_RESOLUTION_KINDS = (EntryKind.CAPTURE, EntryKind.RELEASE)
_HOLD_KINDS = (EntryKind.HOLD, *_RESOLUTION_KINDS)
_RELEASED = (HoldStatus.RELEASED, HoldStatus.EXPIRED)  # both are resolved by a release entry
_PAYMENT_REFERENCE = "payment:"  # entries of a payment carry reference "payment:<payment id>"
_LOOKUP_BATCH = 500  # accounts per IN (...) when filling in balances of flagged accounts


async def verify_ledger(session: AsyncSession) -> list[AccountMismatch]:
    """Every account something is wrong with, in user order; empty when the books are right."""
    found: dict[int, _Found] = {}

    def at(user_id: int) -> _Found:
        return found.setdefault(user_id, _Found())

    await _balance_checks(session, at)
    for user_id, problem in await _hold_problems(session):
        at(user_id).problems.append(problem)
    for user_id, problem in await _payment_problems(session):
        at(user_id).problems.append(problem)
    await _fill_balances(session, found)
    return [
        AccountMismatch(
            user_id=user_id,
            balance=item.balance,
            entries_sum=item.total,
            first_bad_entry_id=item.first_bad,
            reasons=tuple(item.reasons),
            problems=tuple(item.problems),
        )
        for user_id, item in sorted(found.items())
    ]


@dataclass(slots=True)
class _Found:
    balance: int | None = None
    total: int = 0
    known: bool = False  # balance and total already read
    first_bad: uuid.UUID | None = None
    reasons: list[str] = field(default_factory=list)  # why the balance doesn't add up
    problems: list[str] = field(default_factory=list)  # holds and payments, one line each


# --- balances ----------------------------------------------------------------------------------


async def _balance_checks(session: AsyncSession, at: Callable[[int], _Found]) -> None:
    """Balance == sum(entries), last_seq == newest seq, and an unbroken balance_after chain.

    An account without entries isn't held to a last_seq: /delete_me erases the entries but keeps
    the counter, so that a number is never used twice."""
    sums = (
        select(
            CreditEntry.user_id,
            func.sum(CreditEntry.amount).label("total"),
            func.max(CreditEntry.seq).label("newest"),
        )
        .group_by(CreditEntry.user_id)
        .subquery()
    )

    def note(user_id: int, balance: int | None, total: int, reason: str) -> None:
        item = at(user_id)
        item.balance, item.total, item.known = balance, total, True
        item.reasons.append(reason)

    total_col = func.coalesce(sums.c.total, 0)
    rows = await session.execute(
        select(CreditAccount.user_id, CreditAccount.balance, total_col)
        .outerjoin(sums, sums.c.user_id == CreditAccount.user_id)
        .where(CreditAccount.balance != total_col)
    )
    for user_id, balance, total in rows:
        note(user_id, balance, int(total), "balance != sum(entries)")

    counters = await session.execute(
        select(CreditAccount.user_id, CreditAccount.balance, sums.c.total)
        .join(sums, sums.c.user_id == CreditAccount.user_id)
        .where(CreditAccount.last_seq != sums.c.newest)
    )
    for user_id, balance, total in counters:
        note(user_id, balance, int(total), "last_seq != newest entry's seq")

    orphans = await session.execute(
        select(sums.c.user_id, sums.c.total)
        .outerjoin(CreditAccount, CreditAccount.user_id == sums.c.user_id)
        .where(CreditAccount.user_id.is_(None))
    )
    for user_id, total in orphans:
        note(user_id, None, int(total), "entries without an account")

    order = CreditEntry.seq
    chain = select(
        CreditEntry.id,
        CreditEntry.user_id,
        CreditEntry.amount,
        CreditEntry.balance_after,
        func.lag(CreditEntry.balance_after)
        .over(partition_by=CreditEntry.user_id, order_by=order)
        .label("previous"),
        func.row_number().over(partition_by=CreditEntry.user_id, order_by=order).label("position"),
    ).subquery()
    breaks = await session.execute(
        select(chain.c.id, chain.c.user_id)
        .where(chain.c.balance_after - chain.c.amount != func.coalesce(chain.c.previous, 0))
        .order_by(chain.c.user_id, chain.c.position)
    )
    for entry_id, user_id in breaks:
        item = at(user_id)
        if item.first_bad is None:  # the first break of each account is the one named
            item.first_bad = entry_id
            item.reasons.append("balance_after chain broken")


async def _fill_balances(session: AsyncSession, found: dict[int, _Found]) -> None:
    """Balance and entries sum of the flagged accounts not read yet, a batch of accounts a query."""
    missing = sorted(user_id for user_id, item in found.items() if not item.known)
    for start in range(0, len(missing), _LOOKUP_BATCH):
        batch = missing[start : start + _LOOKUP_BATCH]
        totals = await session.execute(
            select(CreditEntry.user_id, func.sum(CreditEntry.amount))
            .where(CreditEntry.user_id.in_(batch))
            .group_by(CreditEntry.user_id)
        )
        balances = await session.execute(
            select(CreditAccount.user_id, CreditAccount.balance).where(CreditAccount.user_id.in_(batch))
        )
        total_of = {int(user_id): int(total) for user_id, total in totals}
        balance_of = {int(user_id): int(balance) for user_id, balance in balances}
        for user_id in batch:
            item = found[user_id]
            item.balance, item.total = balance_of.get(user_id), total_of.get(user_id, 0)


# --- holds -------------------------------------------------------------------------------------


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


async def _hold_problems(session: AsyncSession) -> list[tuple[int, str]]:
    per_hold = _per_hold()
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
    rows = await session.execute(
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
    problems: list[tuple[int, str]] = []
    for row in rows:
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
            yield f"active, but resolved by {_resolution_entries(hold)}"
        return
    if hold.resolutions == 0:
        yield f"{hold.status.value}, but has no {expected_kind.value} entry"
        return
    if hold.resolutions > 1:
        yield f"resolved {hold.resolutions} times ({_resolution_entries(hold)}), expected once"
        return
    wrong_kind = hold.releases if expected_kind is EntryKind.CAPTURE else hold.captures
    if wrong_kind:
        yield f"{hold.status.value}, but resolved by {_resolution_entries(hold)}"
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


def _resolution_entries(hold: _HoldRow) -> str:
    parts = [f"{hold.captures} capture"] if hold.captures else []
    parts += [f"{hold.releases} release"] if hold.releases else []
    return " and ".join(parts) + _entries(hold.resolutions)


def _entries(count: int) -> str:
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
            f"{count} {EntryKind(kind).value}{_entries(count)} ({int(amount):+d}) without their hold",
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


# --- payments ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PaymentRow:
    id: uuid.UUID
    user_id: int
    charge_id: str
    credits: int
    status: PaymentStatus


@dataclass(frozen=True, slots=True)
class _PaymentEntry:
    user_id: int
    kind: EntryKind
    amount: int
    key: str


# One function per rule: (payment, the entries that reference it) -> what is wrong, if anything.
_PaymentRule = Callable[[_PaymentRow, Sequence[_PaymentEntry]], Iterable[str]]


async def _payment_problems(session: AsyncSession) -> list[tuple[int, str]]:
    """Every payment against the top-up and refund entries that reference it.

    Matched in Python by the entries' reference ("payment:<payment id>", which stays short for a
    charge id long enough to be keyed by its digest). Payments and entries come in one UNION ALL
    statement, so on PostgreSQL they are read from one snapshot: a payment credited meanwhile is
    seen with its top-up or not at all."""
    payments: dict[uuid.UUID, _PaymentRow] = {}
    entries: list[tuple[str, _PaymentEntry]] = []
    for source, ref, user_id, what, number, text in await session.execute(_payments_and_their_entries()):
        if source == "payment":
            payment_id = parse_uuid(ref)
            assert payment_id is not None
            payments[payment_id] = _PaymentRow(
                id=payment_id,
                user_id=int(user_id),
                charge_id=text,
                credits=int(number),
                status=PaymentStatus(what),
            )
        else:
            entry = _PaymentEntry(user_id=int(user_id), kind=EntryKind(what), amount=int(number), key=text)
            entries.append((ref, entry))

    by_payment: dict[uuid.UUID, list[_PaymentEntry]] = defaultdict(list)
    problems: list[tuple[int, str]] = []
    for reference, entry in entries:
        payment_id = parse_uuid(reference.removeprefix(_PAYMENT_REFERENCE))
        if payment_id is not None and payment_id in payments:
            by_payment[payment_id].append(entry)
        else:
            problems.append(
                (
                    entry.user_id,
                    f"{entry.kind.value} entry {entry.key} ({entry.amount:+d}) for a payment that doesn't exist",
                )
            )
    for payment in sorted(payments.values(), key=lambda p: (p.user_id, p.charge_id)):
        found = by_payment.get(payment.id, [])
        for rule in _PAYMENT_RULES:
            problems.extend(
                (payment.user_id, f"payment {payment.charge_id}: {what}") for what in rule(payment, found)
            )
    return problems


def _payments_and_their_entries() -> Any:
    """(source, payment id or entry reference, user, status or kind, credits or amount, charge id
    or key): every payment, then every top-up and refund entry that references a payment."""
    payments = select(
        literal("payment"),
        cast(Payment.id, String),  # hyphenated on PostgreSQL, bare hex on SQLite: parse_uuid reads both
        Payment.user_id,
        cast(Payment.status, String),
        Payment.credits,
        Payment.telegram_payment_charge_id,
    )
    entries = select(
        literal("entry"),
        CreditEntry.reference,
        CreditEntry.user_id,
        cast(CreditEntry.kind, String),
        CreditEntry.amount,
        CreditEntry.idempotency_key,
    ).where(
        CreditEntry.kind.in_((EntryKind.TOPUP, EntryKind.REFUND)),
        CreditEntry.reference.like(f"{_PAYMENT_REFERENCE}%"),
    )
    return union_all(payments, entries)


def _topup_rule(payment: _PaymentRow, entries: Sequence[_PaymentEntry]) -> Iterator[str]:
    """Every payment was credited exactly once, with its credits, to its payer, under its key."""
    topups = [e for e in entries if e.kind is EntryKind.TOPUP]
    yield from _exactly_one(
        payment, topups, "top-up", expected=payment.credits, key=payment_key(payment.charge_id)
    )


def _expected_refund_debit(payment: _PaymentRow) -> int | None:
    """The REFUND debit a payment's status calls for (signed); None when it calls for none."""
    # TODO(refunds, merge): a REFUNDING payment (refund in flight) already has its debit, like a
    # REFUNDED one; with `refund_shortfall` the debit is -(credits - refund_shortfall) and there
    # is none when that is 0; a credit-back entry (Telegram refused the refund) needs a rule of
    # its own, as REFUND credits of a payment are not checked yet.
    if payment.status is PaymentStatus.REFUNDED:
        return -payment.credits
    return None


def _refund_rule(payment: _PaymentRow, entries: Sequence[_PaymentEntry]) -> Iterator[str]:
    """A refunded payment was debited exactly once; any other has no refund debit."""
    debits = [e for e in entries if e.kind is EntryKind.REFUND and e.amount < 0]
    expected = _expected_refund_debit(payment)
    if expected is None:
        if debits:
            yield f"{payment.status.value}, but has {_amounts('refund debit', debits)}"
        return
    yield from _exactly_one(
        payment, debits, "refund debit", expected=expected, key=refund_key(payment.charge_id)
    )


_PAYMENT_RULES: tuple[_PaymentRule, ...] = (_topup_rule, _refund_rule)


def _exactly_one(
    payment: _PaymentRow, found: Sequence[_PaymentEntry], what: str, *, expected: int, key: str
) -> Iterator[str]:
    if not found:
        yield f"{payment.status.value}, but has no {what} entry (expected {expected:+d})"
        return
    if len(found) > 1:
        yield f"{_amounts(what, found)}, expected one of {expected:+d}"
        return
    entry = found[0]
    if entry.amount != expected:
        yield f"{what} entry of {entry.amount:+d}, expected {expected:+d} for {payment.credits} credits"
    if entry.key != key:
        yield f"{what} entry keyed {entry.key}, expected {key}"
    if entry.user_id != payment.user_id:
        yield f"{what} entry on account {entry.user_id}, not the payer's"


def _amounts(what: str, entries: Sequence[_PaymentEntry]) -> str:
    amounts = ", ".join(f"{amount:+d}" for amount in sorted(e.amount for e in entries))
    return f"{len(entries)} {what}{_entries(len(entries))} ({amounts})"
