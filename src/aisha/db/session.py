"""Engine and session factory; one unit of work = one session with one transaction."""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction, make_transient_to_detached
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_BUSY_TIMEOUT_SECONDS = 30


# A pooled connection is tested before use only after it sat idle this long: long enough to have
# been cut (a database restart, a proxy's idle timeout). Testing every checkout (pool_pre_ping)
# costs three round trips on asyncpg (BEGIN, a query, ROLLBACK): more than an update's own work.
PING_AFTER_IDLE_SECONDS = 2.0
_IDLE_SINCE = "aisha.idle_since"


def create_engine(database_url: str, *, echo: bool = False, pool_size: int = 25) -> AsyncEngine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(database_url, echo=echo)
    # pool_size connections, kept open; a unit of work beyond them waits for one. No overflow: an
    # overflow connection is opened and closed per use (a connect, every statement prepared
    # again), which under a burst makes each update slower exactly when they pile up.
    engine = create_async_engine(database_url, echo=echo, pool_size=pool_size, max_overflow=0)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()  # just opened: known alive

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool drops this connection and checks out another (a new one if need be).
            raise DisconnectionError(str(error)) from error


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


# --- the rule: no outside call while a transaction with writes is open -------------------------
#
# A call to Telegram, FAL, OpenAI or object storage can take seconds or fail; made inside a
# transaction it holds locks (on SQLite: every writer's) for that long, and its failure would roll
# back whatever money moved with it. So state is committed first and the call made after. Sessions
# that wrote something in their open transaction are known here, by the task that wrote, so that
# the test suite can refuse any outside call made while the calling task holds one.

_writing: weakref.WeakSet[Session] = weakref.WeakSet()
_WRITER = "aisha.writer_task"


class OutsideCallInTransaction(RuntimeError):
    """An outside call was made while the calling task held uncommitted writes."""


def _mark_writing(session: Session) -> None:
    session.info[_WRITER] = asyncio.current_task()
    _writing.add(session)


def mark_writing(session: AsyncSession) -> None:
    """Note a write the session events can't see (a text statement that inserts or updates)."""
    _mark_writing(session.sync_session)


Row = TypeVar("Row")


def add_as_loaded(session: AsyncSession, instance: Row) -> Row:
    """A row another statement read (the update's claim, a cache), made persistent in the session
    as if the session had loaded it: no statement sent, no change pending."""
    make_transient_to_detached(instance)
    session.sync_session.add(instance)
    return instance


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        _mark_writing(state.session)


@event.listens_for(Session, "before_flush")
def _on_flush(session: Session, _context: Any, _instances: Any) -> None:
    if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
        _mark_writing(session)


@event.listens_for(Session, "after_transaction_end")
def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost transaction: committed or rolled back
        session.info.pop(_WRITER, None)
        _writing.discard(session)


# The unit of work of the update being handled: it commits early, before the first outside call
# its handler makes (see bot/middlewares.py UnitOfWorkMiddleware).
_update_unit: ContextVar[AsyncSession | None] = ContextVar("aisha_update_unit", default=None)
_OWNER = "aisha.update_task"


@contextmanager
def commits_before_outside_calls(session: AsyncSession) -> Iterator[None]:
    """While the block runs, `before_outside_call` commits `session` (for this task only: a job
    started from here runs in a task of its own, with units of work of its own)."""
    session.info[_OWNER] = asyncio.current_task()
    token = _update_unit.set(session)
    try:
        yield
    finally:
        _update_unit.reset(token)


async def before_outside_call() -> None:
    """Called before a call leaves the process (Telegram, storage): commit the update's work."""
    session = _update_unit.get()
    if (
        session is not None
        and session.info.get(_OWNER) is asyncio.current_task()
        and session.in_transaction()
    ):
        await commit(session)


P = ParamSpec("P")
R = TypeVar("R")


def outside_call(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Marks a method that leaves the process (object storage): the update's work commits first."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        await before_outside_call()
        return await method(*args, **kwargs)

    return call


def uncommitted_writes() -> bool:
    """Whether the calling task holds a session with writes not yet committed."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop: no task, no session of ours
        return False
    return task is not None and any(s.info.get(_WRITER) is task for s in list(_writing))


def refuse_outside_call(what: str) -> None:
    """Raise if `what` (an outside call) is being made while the calling task holds uncommitted
    writes. The tests wrap every HTTP client and storage call with it."""
    if uncommitted_writes():
        raise OutsideCallInTransaction(
            f"{what} while a database transaction with writes is open: commit first, then call"
        )


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


async def commit(session: AsyncSession) -> None:
    """Commit the unit of work so far, then run what waited for it (`after_commit`). The session
    goes on: its next statement opens a new transaction."""
    if session.in_transaction():  # else nothing happened since the last commit: nothing to send
        await session.commit()
    await run_after_commit(session)


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
