"""Payments: each credited once, each refund debited (and a refused one given back) once."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.keys import payment_key, refund_back_key, refund_key
from aisha.billing.models import CreditEntry, EntryKind, Payment, PaymentStatus
from aisha.billing.verify.holds import entries_word
from aisha.db.base import parse_uuid

_PAYMENT_REFERENCE = "payment:"  # entries of a payment carry reference "payment:<payment id>"


@dataclass(frozen=True, slots=True)
class _PaymentRow:
    id: uuid.UUID
    user_id: int
    charge_id: str
    credits: int
    status: PaymentStatus
    refund_attempts: int = 0  # refunds started; all but an open one (refunding, refunded) refused
    refund_shortfall: int = 0  # credits a refund made outside the bot could not take back


@dataclass(frozen=True, slots=True)
class _PaymentEntry:
    user_id: int
    kind: EntryKind
    amount: int
    key: str


# One function per rule: (payment, the entries that reference it) -> what is wrong, if anything.
_PaymentRule = Callable[[_PaymentRow, Sequence[_PaymentEntry]], Iterable[str]]


async def payment_problems(session: AsyncSession) -> list[tuple[int, str]]:
    """Every payment against the top-up and refund entries that reference it.

    Matched in Python by the entries' reference ("payment:<payment id>", which stays short for a
    charge id long enough to be keyed by its digest). Payments and entries come in one UNION ALL
    statement, so on PostgreSQL they are read from one snapshot: a payment credited meanwhile is
    seen with its top-up or not at all."""
    payments: dict[uuid.UUID, _PaymentRow] = {}
    entries: list[tuple[str, _PaymentEntry]] = []
    for source, ref, user_id, what, number, text, attempts, shortfall in await session.execute(
        _payments_and_theirentries_word()
    ):
        if source == "payment":
            payment_id = parse_uuid(ref)
            assert payment_id is not None
            payments[payment_id] = _PaymentRow(
                id=payment_id,
                user_id=int(user_id),
                charge_id=text,
                credits=int(number),
                status=PaymentStatus(what),
                refund_attempts=int(attempts),
                refund_shortfall=int(shortfall),
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


def _payments_and_theirentries_word() -> Any:
    """(source, payment id or entry reference, user, status or kind, credits or amount, charge id
    or key, refund attempts, refund shortfall): every payment, then every top-up and refund entry
    that references a payment."""
    payments = select(
        literal("payment"),
        cast(Payment.id, String),  # hyphenated on PostgreSQL, bare hex on SQLite: parse_uuid reads both
        Payment.user_id,
        cast(Payment.status, String),
        Payment.credits,
        Payment.telegram_payment_charge_id,
        Payment.refund_attempts,
        Payment.refund_shortfall,
    )
    entries = select(
        literal("entry"),
        CreditEntry.reference,
        CreditEntry.user_id,
        cast(CreditEntry.kind, String),
        CreditEntry.amount,
        CreditEntry.idempotency_key,
        literal(0),
        literal(0),
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


def _refund_rule(payment: _PaymentRow, entries: Sequence[_PaymentEntry]) -> Iterator[str]:
    """Every refund Telegram refused was debited and given back once; a refunding or refunded
    payment was debited once more, of its credits less the shortfall; a paid one has no other."""
    charge, credits = payment.charge_id, payment.credits
    rest = [e for e in entries if e.kind is EntryKind.REFUND]
    # The refund under way or done (its number); older ones were refused. A payment refunded
    # before refunds were numbered counts as attempt 1.
    open_attempt = None if payment.status is PaymentStatus.PAID else max(payment.refund_attempts, 1)
    refused = range(1, open_attempt if open_attempt is not None else payment.refund_attempts + 1)
    for attempt in refused:
        for key, expected, what in (
            (refund_key(charge, attempt), -credits, f"refund debit of refused refund {attempt}"),
            (refund_back_key(charge, attempt), credits, f"refund credit of refused refund {attempt}"),
        ):
            yield from _exactly_one(
                payment, [e for e in rest if e.key == key], what, expected=expected, key=key
            )
            rest = [e for e in rest if e.key != key]
    debits = [e for e in rest if e.amount < 0]
    given_back = [e for e in rest if e.amount > 0]
    if given_back:
        yield f"{_amounts('refund credit', given_back)} that no refused refund explains"
    if open_attempt is None or credits == payment.refund_shortfall:
        # Paid, or refunded when every credit was already spent: no debit.
        if debits:
            yield f"{payment.status.value}, but has {_amounts('refund debit', debits)}"
        return
    yield from _exactly_one(
        payment,
        debits,
        "refund debit",
        expected=-(credits - payment.refund_shortfall),
        key=refund_key(charge, open_attempt),
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
    return f"{len(entries)} {what}{entries_word(len(entries))} ({amounts})"
