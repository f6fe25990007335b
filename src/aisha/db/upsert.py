"""INSERT ... ON CONFLICT DO NOTHING for PostgreSQL and SQLite alike."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Insert, Table, bindparam
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


async def insert_ignore(
    session: AsyncSession, table: Table, values: Mapping[str, Any], *, conflict_columns: Iterable[str]
) -> bool:
    """Insert a row unless one with the same key exists; True when this call inserted it.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    reports the conflict, which is what makes "handled exactly once" hold across processes.
    """
    dialect = session.get_bind().dialect.name
    statement = _statement(dialect, table, tuple(values), tuple(conflict_columns))
    result = await session.execute(statement, dict(values))
    return bool(result.rowcount)  # type: ignore[attr-defined]


@functools.cache
def _statement(dialect: str, table: Table, columns: tuple[str, ...], conflict: tuple[str, ...]) -> Insert:
    # Built once per shape, with the values as parameters: it runs on every update. The dialect's
    # module is imported here, when the engine has loaded it already: a process on SQLite never
    # loads PostgreSQL's (some 3 MB), and one on PostgreSQL never SQLite's.
    statement: PgInsert | SqliteInsert
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(table)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table)
    values = {name: bindparam(name, type_=table.c[name].type) for name in columns}
    return statement.values(values).on_conflict_do_nothing(index_elements=list(conflict))
