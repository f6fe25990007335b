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
- payments: each payment has exactly one top-up entry of its credits (under `payment_key`); each
  refund Telegram refused has its refund debit and the refund credit that gave it back (under
  `refund_key` and `refund_back_key` of its attempt); and a refunding or refunded payment has
  exactly one refund debit of its credits less its `refund_shortfall` (none when that is 0).

SQL finds what is wrong (holds: anything not in one of the normal shapes); Python says what, one
line per problem, so a hold that SQL flags is always reported even if no rule explains it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.results import AccountMismatch
from aisha.billing.verify.balances import Found, balance_checks, fill_balances
from aisha.billing.verify.holds import hold_problems
from aisha.billing.verify.payments import payment_problems

__all__ = ["verify_ledger"]


async def verify_ledger(session: AsyncSession) -> list[AccountMismatch]:
    """Every account something is wrong with, in user order; empty when the books are right."""
    found: dict[int, Found] = {}

    def at(user_id: int) -> Found:
        return found.setdefault(user_id, Found())

    await balance_checks(session, at)
    for user_id, problem in await hold_problems(session):
        at(user_id).problems.append(problem)
    for user_id, problem in await payment_problems(session):
        at(user_id).problems.append(problem)
    await fill_balances(session, found)
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
