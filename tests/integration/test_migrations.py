"""The models and the migrations describe the same schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    String,
    Uuid,
    column,
    insert,
    inspect,
    table,
    text,
)

from aisha.billing import LedgerService
from aisha.clock import FrozenClock
from aisha.db.migrate import upgrade
from aisha.db.session import create_engine, create_session_factory, execute_autocommit, unit_of_work
from aisha.models import Base
from tests.conftest import PG_ADMIN_URL, Database, _require


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_models_match_migrations(db: Database) -> None:
    async with db.engine.connect() as connection:
        diff = await connection.run_sync(_diff)
    assert diff == []


async def test_every_table_is_created(db: Database) -> None:
    async with db.engine.connect() as connection:
        tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert set(Base.metadata.tables) <= tables


# --- 0005: ledger entry seq ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (nothing migrated yet), on SQLite or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    _require("PostgreSQL", PG_ADMIN_URL, 5432)
    name = f"aisha_migrate_{uuid.uuid4().hex[:12]}"
    await execute_autocommit(PG_ADMIN_URL, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
    finally:
        await execute_autocommit(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The tables as revision 0004 left them (only the columns written here), typed so that each
# dialect gets its own uuid and timestamp formats.
_users = table(
    "users",
    column("telegram_id", BigInteger()),
    column("language", String()),
    column("is_blocked", Boolean()),
    column("created_at", DateTime(timezone=True)),
    column("last_seen_at", DateTime(timezone=True)),
)
_accounts = table(
    "credit_accounts",
    column("user_id", BigInteger()),
    column("balance", BigInteger()),
    column("updated_at", DateTime(timezone=True)),
)
_entries = table(
    "credit_entries",
    column("id", Uuid()),
    column("user_id", BigInteger()),
    column("kind", String()),
    column("amount", BigInteger()),
    column("balance_after", BigInteger()),
    column("description", String()),
    column("description_args", JSON()),
    column("idempotency_key", String()),
    column("created_at", DateTime(timezone=True)),
)


async def test_entry_seq_is_backfilled_in_the_old_order(empty_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_url, "0004")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    later = t0 + timedelta(seconds=5)

    def entry(n: int, user_id: int, amount: int, balance_after: int, at: datetime) -> dict[str, Any]:
        return {
            "id": uuid.UUID(int=n),
            "user_id": user_id,
            "kind": "adjustment",
            "amount": amount,
            "balance_after": balance_after,
            "description": "ledger.adjustment",
            "description_args": {},
            "idempotency_key": f"k{n}",
            "created_at": at,
        }

    engine = create_engine(empty_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(_users),
                [
                    {
                        "telegram_id": u,
                        "language": "en",
                        "is_blocked": False,
                        "created_at": t0,
                        "last_seen_at": t0,
                    }
                    for u in (7, 8, 9)
                ],
            )
            await connection.execute(
                insert(_accounts),
                [
                    {"user_id": 7, "balance": 11, "updated_at": t0},
                    {"user_id": 8, "balance": 0, "updated_at": t0},  # no entries: last_seq 0
                    {"user_id": 9, "balance": 2, "updated_at": t0},
                ],
            )
            # Written out of order on purpose: by (created_at, id) user 7's are 3, 1, 2 (ids).
            await connection.execute(
                insert(_entries),
                [
                    entry(2, 7, 5, 11, later),
                    entry(1, 7, -4, 6, later),  # same time as 2: the id decides
                    entry(4, 9, 2, 2, t0),
                    entry(3, 7, 10, 10, t0),
                ],
            )

        await asyncio.to_thread(upgrade, empty_url)

        async with engine.connect() as connection:
            seqs = (
                await connection.execute(
                    text("SELECT user_id, seq, amount FROM credit_entries ORDER BY user_id, seq")
                )
            ).all()
            counters = (
                await connection.execute(
                    text("SELECT user_id, last_seq FROM credit_accounts ORDER BY user_id")
                )
            ).all()
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert [tuple(row) for row in seqs] == [(7, 1, 10), (7, 2, -4), (7, 3, 5), (9, 1, 2)]
    assert [tuple(row) for row in counters] == [(7, 3), (8, 0), (9, 1)]
    assert diff == []

    # And the migrated books verify clean: the chain in seq order is the old order's.
    engine = create_engine(empty_url)
    try:
        async with unit_of_work(create_session_factory(engine)) as session:
            ledger = LedgerService(clock=FrozenClock(), hold_ttl=timedelta(hours=1))
            assert await ledger.verify_all(session=session) == []
            nxt = await ledger.credit(session=session, user_id=7, amount=1, key="after")
            assert (
                await session.scalar(text("SELECT seq FROM credit_entries WHERE idempotency_key = 'after'"))
                == 4
            )
            assert nxt.balance == 12
    finally:
        await engine.dispose()
