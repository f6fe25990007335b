"""Shared fixtures: real databases (SQLite always; PostgreSQL and Redis when reachable).

PostgreSQL and Redis tests are skipped with a clear line when the servers can't be reached,
unless AISHA_REQUIRE_SERVICES=1 (set by .ci/run), where an unreachable server fails the run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from aisha.db.migrate import upgrade
from aisha.db.session import (
    before_outside_call,
    create_engine,
    create_session_factory,
    execute_autocommit,
    refuse_outside_call,
)
from aisha.models import Base
from aisha.sandbox.faults import Fault, FaultPlan
from aisha.storage.local import LocalStorage
from aisha.storage.s3 import S3Storage

PG_ADMIN_URL = os.environ.get("DATABASE_TEST_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("AISHA_REQUIRE_SERVICES") == "1"
T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    """structlog's console output, with plain tracebacks: its default renders each logged exception
    with rich and every frame's locals, about a second of CPU inside the event loop the app shares
    with the test, which on a loaded machine can run a wait past its deadline."""
    processors = list(structlog.get_config()["processors"])
    processors[-1] = structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )
    structlog.configure(processors=processors)


def _in_thread(function: Callable[[], T]) -> T:
    """Run blocking setup (Alembic, asyncio.run) outside any running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result()


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _require(name: str, url: str, default_port: int) -> None:
    if _reachable(url, default_port):
        return
    parts = urlsplit(url)
    where = f"{parts.hostname or '127.0.0.1'}:{parts.port or default_port}"
    redacted = parts._replace(netloc=where).geturl()  # no user or password in the line
    message = f"{name} not reachable at {redacted}: skipping the tests that need it"
    if REQUIRE_SERVICES:
        pytest.fail(f"{name} is required (AISHA_REQUIRE_SERVICES=1) but not reachable at {redacted}")
    pytest.skip(message)


def run_aisha(
    *args: str,
    cwd: Path,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`aisha ARGS` in a child process with only PATH (plus DATABASE_URL, plus `env`) set."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if database_url is not None:
        full_env["DATABASE_URL"] = database_url
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "aisha", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped afterwards."""
    _require("PostgreSQL", PG_ADMIN_URL, 5432)
    name = f"aisha_test_{uuid.uuid4().hex[:12]}"
    admin = urlsplit(PG_ADMIN_URL)
    url = admin._replace(path=f"/{name}").geturl()

    _in_thread(lambda: asyncio.run(execute_autocommit(PG_ADMIN_URL, f'CREATE DATABASE "{name}"')))
    try:
        _in_thread(lambda: upgrade(url))
        yield url
    finally:
        _in_thread(
            lambda: asyncio.run(
                execute_autocommit(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file; each test gets a copy, which is much faster than migrating."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    _in_thread(lambda: upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@dataclass
class Database:
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


async def waits_for_a_lock(db: Database, task: asyncio.Task[Any], *, timeout: float = 10.0) -> bool:
    """True once a backend of `db` waits for a lock while `task` still runs (PostgreSQL's pg_locks):
    proof that the task is blocked, where a sleep would only show it was slow."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and loop.time() < deadline:
        async with db.engine.connect() as connection:
            waiting = await connection.scalar(
                text(
                    # A row lock is waited for as a transaction id, which names no database.
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE NOT l.granted AND a.datname = current_database()"
                )
            )
        if waiting:
            return not task.done()
        await asyncio.sleep(0.02)
    return False


async def _truncate_all(engine: AsyncEngine) -> None:
    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    async with engine.begin() as connection:
        await connection.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "aisha.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    engine = create_engine(sqlite_url)
    yield Database(sqlite_url, engine, create_session_factory(engine))
    await engine.dispose()


@pytest.fixture
async def postgres_db(postgres_url: str) -> AsyncIterator[Database]:
    engine = create_engine(postgres_url, pool_size=25)
    await _truncate_all(engine)
    yield Database(postgres_url, engine, create_session_factory(engine))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Database:
    """The same test on SQLite (the embedded default) and on PostgreSQL."""
    fixture = "sqlite_db" if request.param == "sqlite" else "postgres_db"
    database: Database = request.getfixturevalue(fixture)
    return database


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database emptied before each test."""
    _require("Redis", REDIS_TEST_URL, 6379)
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_TEST_URL)
    await client.flushdb()
    await client.aclose()
    yield REDIS_TEST_URL


# --- the rule: no outside call while a transaction with writes is open -------------------------

_STORAGE_CALLS = ("put", "get", "delete", "delete_prefix", "exists", "size")


def _guarded(what: str, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        await before_outside_call()  # what production does first: an update's work commits early
        refuse_outside_call(what)
        return await call(*args, **kwargs)

    return guarded


@pytest.fixture(autouse=True)
def no_outside_call_in_a_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test fails if code makes an HTTP call (Telegram through aiohttp; FAL and OpenAI
    through httpx) or a storage call while its task holds uncommitted writes."""
    monkeypatch.setattr(httpx.AsyncClient, "send", _guarded("an HTTP call", httpx.AsyncClient.send))
    monkeypatch.setattr(
        aiohttp.ClientSession, "_request", _guarded("a Bot API call", aiohttp.ClientSession._request)
    )
    for storage in (LocalStorage, S3Storage):
        for name in _STORAGE_CALLS:
            monkeypatch.setattr(storage, name, _guarded(f"storage.{name}", getattr(storage, name)))


# --- fault points: which injected failures (fail_nth) the suite drove --------------------------

_fault_points: dict[tuple[str, str, Fault], str] = {}


@pytest.fixture(autouse=True)
def record_fault_points(request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(FaultPlan.served)
    yield
    if not request.node.nodeid.startswith("tests/unit"):  # the fakes' own tests drive no app
        for point in FaultPlan.served[start:]:
            _fault_points.setdefault(point, request.node.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _fault_points:
        return
    terminalreporter.section("fault injection")
    for (service, key, fault), test in sorted(_fault_points.items()):
        terminalreporter.write_line(f"{service:8} {key:40} {fault.value:13} {test}")
    terminalreporter.write_line(
        f"{len(_fault_points)} fault points driven (a call of Telegram, FAL or OpenAI made to fail)"
    )
