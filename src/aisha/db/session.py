"""Engine and session factory; one unit of work = one session with one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

SQLITE_BUSY_TIMEOUT_SECONDS = 30


def create_engine(database_url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(database_url, echo=echo)
    return create_async_engine(
        database_url, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


async def execute_autocommit(database_url: str, statement: str) -> None:
    """Run one statement outside any transaction: CREATE and DROP DATABASE can't run inside one
    (the tests and benchmarks make their own PostgreSQL databases with it)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def _create_sqlite_engine(database_url: str, *, echo: bool) -> AsyncEngine:
    url = make_url(database_url)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        database_url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, open transactions, so that we can open them IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the lock up front: two deferred transactions that both upgrade to write
        # would otherwise fail with "database is locked" instead of waiting their turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


Action = Callable[[], Awaitable[object]]


def after_commit(session: AsyncSession, action: Action) -> None:
    """Run `action` once the unit of work this session belongs to has committed (not on rollback):
    for enqueueing a job whose row must be visible to it."""
    session.info.setdefault("after_commit", []).append(action)


async def run_after_commit(session: AsyncSession) -> None:
    for action in session.info.pop("after_commit", []):
        await action()


def at_end(session: AsyncSession, action: Action) -> None:
    """Run `action` when the unit of work ends, committed or rolled back: to release a lock taken
    for it only once its writes are visible (or gone)."""
    session.info.setdefault("at_end", []).append(action)


async def run_at_end(session: AsyncSession) -> None:
    for action in session.info.pop("at_end", []):
        await action()


@asynccontextmanager
async def unit_of_work(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One session, one transaction: committed when the block ends, rolled back on an error."""
    async with factory() as session:
        try:
            async with session.begin():
                yield session
            await run_after_commit(session)
        finally:
            await run_at_end(session)
