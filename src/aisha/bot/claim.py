"""An update's first statement on PostgreSQL: its id claimed, the user's row and the wizard state
read, in one round trip.

The update's id is inserted (ON CONFLICT DO NOTHING) in a data-modifying CTE of a SELECT that
also reads the user and the FSM record: three statements' work for one. The insert is part of
the update's transaction as before, so "handled exactly once" holds as it did (a concurrent
delivery of the same id waits for the first transaction, then finds it claimed). The rows read
come from the statement's snapshot, as fresh as a read right after the insert: the user's row is
read on every update, so a block or a deletion holds at once in every process.

SQLite has no data-modifying CTE: there the middlewares make the three statements themselves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.db.models import FsmRecord, ProcessedUpdate
from aisha.db.session import mark_writing
from aisha.users.models import User

_FSM_PREFIX = "fsm_"


@functools.cache
def _claim_statement() -> Any:
    """Built once, at PostgreSQL's first update (so SQLite never loads that dialect): one row, with
    `first_time` (1 when this call inserted the id), the user's columns (all NULL when there is no
    such user) and the FSM record's (`fsm_…`, NULL when none)."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    updates, users, records = ProcessedUpdate.__table__, User.__table__, FsmRecord.__table__
    claimed = (
        pg_insert(ProcessedUpdate)
        .values(
            update_id=bindparam("update_id", type_=BigInteger),
            processed_at=bindparam("processed_at", type_=updates.c.processed_at.type),
        )
        .on_conflict_do_nothing(index_elements=["update_id"])
        .returning(updates.c.update_id)
        .cte("claimed")
    )
    one = select(literal_column("1").label("one")).subquery("one")
    first_time = select(func.count()).select_from(claimed).scalar_subquery().label("first_time")
    return select(
        first_time,
        *users.c,
        *(column.label(_FSM_PREFIX + column.key) for column in records.c),
    ).select_from(
        one.outerjoin(users, users.c.telegram_id == bindparam("user_id", type_=BigInteger)).outerjoin(
            records, records.c.key == bindparam("fsm_key", type_=String)
        )
    )


_USER_COLUMNS = tuple(column.key for column in User.__table__.columns)
_FSM_COLUMNS = tuple(column.key for column in FsmRecord.__table__.columns)


@dataclass(frozen=True, slots=True)
class Claim:
    first_time: bool  # False: the update was handled (or is being handled) already
    user: dict[str, Any] | None  # the user's row; None when unknown (or no user was asked for)
    fsm: dict[str, Any] | None  # the FSM record's row; None when there is none


async def claim_update(
    session: AsyncSession, *, update_id: int, now: datetime, user_id: int | None, fsm_key: str | None
) -> Claim:
    """Record the update id in the session's transaction and read the user and the FSM record."""
    # Core on the session's connection: no ORM machinery for a statement run on every update.
    connection = await session.connection()
    row = (
        await connection.execute(
            _claim_statement(),
            {"update_id": update_id, "processed_at": now, "user_id": user_id, "fsm_key": fsm_key},
        )
    ).one()
    values = row._mapping
    if not values["first_time"]:
        return Claim(first_time=False, user=None, fsm=None)
    mark_writing(session)  # the ORM's events don't see a Core insert
    user = {key: values[key] for key in _USER_COLUMNS} if values["telegram_id"] is not None else None
    fsm_found = values[_FSM_PREFIX + "key"] is not None
    fsm = {key: values[_FSM_PREFIX + key] for key in _FSM_COLUMNS} if fsm_found else None
    return Claim(first_time=True, user=user, fsm=fsm)
