"""Balances: each account's balance is the sum of its entries, with an unbroken chain."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.models import CreditAccount, CreditEntry

_LOOKUP_BATCH = 500  # accounts per IN (...) when filling in balances of flagged accounts


@dataclass(slots=True)
class Found:
    balance: int | None = None
    total: int = 0
    known: bool = False  # balance and total already read
    first_bad: uuid.UUID | None = None
    reasons: list[str] = field(default_factory=list)  # why the balance doesn't add up
    problems: list[str] = field(default_factory=list)  # holds and payments, one line each


async def balance_checks(session: AsyncSession, at: Callable[[int], Found]) -> None:
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


async def fill_balances(session: AsyncSession, found: dict[int, Found]) -> None:
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
