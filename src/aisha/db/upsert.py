"""INSERT ... ON CONFLICT DO NOTHING for PostgreSQL and SQLite alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


async def insert_ignore(
    session: AsyncSession, table: Table, values: Mapping[str, Any], *, conflict_columns: Iterable[str]
) -> bool:
    """Insert a row unless one with the same key exists; True when this call inserted it.

    On PostgreSQL a concurrent insert of the same key waits for the other transaction and then
    reports the conflict, which is what makes "handled exactly once" hold across processes.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing(index_elements=list(conflict_columns))
    result = await session.execute(statement)
    return bool(result.rowcount)  # type: ignore[attr-defined]
