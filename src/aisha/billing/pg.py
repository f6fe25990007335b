"""The ledger's operations on PostgreSQL, each in one statement (one round trip, no savepoint).

`LedgerService` tries these first on PostgreSQL. Each either applies the whole operation (entry,
balance, `last_seq`, hold) and returns its figures, or writes nothing at all and returns None; then
the service runs its portable path (pre-read, savepoint), which replays the stored result or raises
the precise error (insufficient credits, hold already resolved, idempotency conflict, ...). So a
replay or a refusal costs a few more round trips; an operation that moves money costs one.

What each guarantee rests on, in every statement below:
- Order and sequence: the `account` CTE takes the account's row lock (FOR UPDATE) before anything is
  written. After waiting for another transaction, FOR UPDATE returns the newest row, so the
  balance and `last_seq` the entry is built from are current, and stay so until COMMIT.
- Never below zero: the entry is only built when `balance + amount >= 0` on that locked row (the
  CHECK constraint stays as the last word).
- Idempotency: the entry's INSERT is the gate: `ON CONFLICT (idempotency_key) DO NOTHING` (which
  waits for a concurrent transaction inserting the same key) and every other write of the
  statement reads the INSERT's RETURNING, so a key already used writes nothing. A key visible
  before the statement doesn't even take the lock (the NOT EXISTS).
- One resolution per hold: the hold row is locked after the account (the lock order of every
  operation) and its status read under that lock (FOR UPDATE re-checks `status = 'active'`
  on the newest row), so of two resolutions only the first one finds it active.
- Data-modifying CTEs all run once and see the same snapshot; the final UPDATE reads `entry`, so
  it runs only for a written entry, on a row this statement has locked.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.books import NewEntry, NewHold, Resolution
from aisha.billing.models import HoldStatus
from aisha.db.session import mark_writing


def _statement(*pieces: str) -> TextClause:
    """One statement from this module's constant pieces; every value goes in as a bind parameter."""
    return text("".join(pieces)).bindparams(bindparam("args", type_=JSON()))


# Every statement has the same shape: `account` (locked, unless the key is already used: then
# nothing is written and no lock is needed), `entry` (the gate), the other writes reading `entry`,
# and the final UPDATE moving the balance to what the entry says (no row: nothing was written).
# The pieces every statement shares are written once:

# The user's account, locked, unless the key is already used (a credit, debit or hold).
_ACCOUNT = """
WITH account AS MATERIALIZED (
    SELECT user_id, balance, last_seq
    FROM credit_accounts
    WHERE user_id = :user_id
      AND NOT EXISTS (SELECT 1 FROM credit_entries WHERE idempotency_key = :key)
    FOR UPDATE
),
"""

# The head of every statement's `entry` CTE: the entry INSERT (the gate).
_ENTRY_INSERT = """entry AS (
    INSERT INTO credit_entries (
        id, user_id, kind, amount, balance_after, seq, hold_id,
        reference, description, description_args, idempotency_key, created_at
    )
"""

# The final UPDATE: the balance and sequence move to what the entry says.
_MOVE_BALANCE = """UPDATE credit_accounts
SET balance = entry.balance_after, last_seq = entry.seq, updated_at = CAST(:now AS timestamptz)
FROM entry
WHERE credit_accounts.user_id = entry.user_id
RETURNING credit_accounts.balance, entry.amount
"""

_APPLY = _statement(
    _ACCOUNT,
    _ENTRY_INSERT,
    """    SELECT CAST(:entry_id AS uuid), user_id, CAST(:kind AS varchar), CAST(:amount AS bigint),
           balance + :amount, last_seq + 1, NULL, CAST(:reference AS varchar),
           CAST(:description AS varchar), CAST(:args AS json), CAST(:key AS varchar),
           CAST(:now AS timestamptz)
    FROM account
    WHERE balance + :amount >= 0
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, amount, balance_after, seq
)
""",
    _MOVE_BALANCE,
)

_HOLD = _statement(
    _ACCOUNT,
    _ENTRY_INSERT,
    """    SELECT CAST(:entry_id AS uuid), user_id, 'hold', -CAST(:amount AS bigint),
           balance - :amount, last_seq + 1, CAST(:hold_id AS uuid), CAST(:reference AS varchar),
           CAST(:description AS varchar), CAST(:args AS json), CAST(:key AS varchar),
           CAST(:now AS timestamptz)
    FROM account
    WHERE balance - :amount >= 0
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, amount, balance_after, seq
),
-- Only with the entry (the entry's hold_id is checked against it at the end of the statement).
held AS (
    INSERT INTO credit_holds (
        id, user_id, amount, captured_amount, status, reference, description,
        expires_at, created_at, resolved_at
    )
    SELECT CAST(:hold_id AS uuid), user_id, CAST(:amount AS bigint), 0, 'active',
           CAST(:reference AS varchar), CAST(:description AS varchar),
           CAST(:expires_at AS timestamptz), CAST(:now AS timestamptz), NULL
    FROM entry
)
""",
    _MOVE_BALANCE,
)

_RESOLVE = _statement(
    """
WITH owner AS (
    -- A hold's user never changes: read without a lock, to lock the account first.
    SELECT user_id FROM credit_holds WHERE id = CAST(:hold_id AS uuid)
),
account AS MATERIALIZED (
    SELECT a.user_id, a.balance, a.last_seq
    FROM credit_accounts a JOIN owner ON a.user_id = owner.user_id
    WHERE NOT EXISTS (SELECT 1 FROM credit_entries WHERE idempotency_key = :key)
    FOR UPDATE OF a
),
locked AS MATERIALIZED (
    -- Joined to the locked account, so locked after it. FOR UPDATE re-checks the condition on the
    -- newest row: a hold resolved while we waited for the account is not active any more.
    SELECT h.id, h.user_id, h.amount, h.reference
    FROM credit_holds h JOIN account ON account.user_id = h.user_id
    WHERE h.id = CAST(:hold_id AS uuid)
      AND h.status = 'active'
      AND CAST(:spend AS bigint) <= h.amount
      AND (NOT CAST(:expiring AS boolean) OR h.expires_at <= CAST(:now AS timestamptz))
    FOR UPDATE OF h
),
""",
    _ENTRY_INSERT,
    """    SELECT CAST(:entry_id AS uuid), account.user_id, CAST(:kind AS varchar),
           locked.amount - :spend, account.balance + locked.amount - :spend,
           account.last_seq + 1, locked.id, locked.reference, CAST(:description AS varchar),
           CAST(:args AS json), CAST(:key AS varchar), CAST(:now AS timestamptz)
    FROM account JOIN locked ON locked.user_id = account.user_id
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, amount, balance_after, seq, hold_id
),
-- No status condition: the hold is locked by this statement and was active under that lock.
resolved AS (
    UPDATE credit_holds
    SET status = CAST(:status AS varchar), captured_amount = CAST(:spend AS bigint),
        resolved_at = CAST(:now AS timestamptz)
    FROM entry
    WHERE credit_holds.id = entry.hold_id
)
""",
    _MOVE_BALANCE,
)


async def apply(session: AsyncSession, entry: NewEntry, *, entry_id: uuid.UUID, now: datetime) -> int | None:
    """A credit or debit; the balance after it, or None when nothing was written."""
    moved = await _run(
        session,
        _APPLY,
        {
            "entry_id": entry_id,
            "user_id": entry.user_id,
            "kind": entry.kind.value,
            "amount": entry.delta,
            "reference": entry.reference,
            "description": entry.description,
            "args": dict(entry.description_args or {}),
            "key": entry.key,
            "now": now,
        },
    )
    return None if moved is None else moved[0]


async def hold(
    session: AsyncSession,
    new: NewHold,
    *,
    entry_id: uuid.UUID,
    hold_id: uuid.UUID,
    now: datetime,
    expires_at: datetime,
) -> int | None:
    """A new hold and its entry; the balance after it, or None when nothing was written."""
    moved = await _run(
        session,
        _HOLD,
        {
            "entry_id": entry_id,
            "hold_id": hold_id,
            "user_id": new.user_id,
            "amount": new.amount,
            "reference": new.reference,
            "description": new.description,
            "args": dict(new.description_args or {}),
            "key": new.key,
            "now": now,
            "expires_at": expires_at,
        },
    )
    return None if moved is None else moved[0]


async def resolve(
    session: AsyncSession, resolution: Resolution, *, entry_id: uuid.UUID, now: datetime
) -> tuple[int, int] | None:
    """Capture, release or expire an active hold: (the balance after it, the credits returned),
    or None when nothing was written (no such hold, not active, not yet due, `spend` over the
    held amount, key used)."""
    return await _run(
        session,
        _RESOLVE,
        {
            "entry_id": entry_id,
            "hold_id": resolution.hold_id,
            "status": resolution.target.value,
            "kind": resolution.kind.value,
            "spend": resolution.spend,
            "expiring": resolution.target is HoldStatus.EXPIRED,
            "description": resolution.description,
            "args": dict(resolution.description_args or {}),
            "key": resolution.key,
            "now": now,
        },
    )


async def _run(
    session: AsyncSession, statement: TextClause, params: dict[str, Any]
) -> tuple[int, int] | None:
    """(balance after, entry amount) of the movement, or None when nothing was written."""
    row = (await session.execute(statement, params)).one_or_none()
    if row is None:
        return None
    # A text statement isn't seen as a write by the session events: say so, for the rule that no
    # outside call is made while a transaction with writes is open.
    mark_writing(session)
    return int(row[0]), int(row[1])
