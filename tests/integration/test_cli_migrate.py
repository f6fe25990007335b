"""`aisha migrate` creates the schema on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import inspect, text

from aisha.db.session import create_engine, execute_autocommit
from aisha.models import Base
from tests.conftest import PG_ADMIN_URL, _require, run_aisha


def _migrate(database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_aisha("migrate", database_url=database_url, cwd=cwd)


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def test_migrate_creates_the_schema_on_sqlite(tmp_path: Path) -> None:
    result = _migrate("sqlite:///./data/fresh.db", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "fresh.db").exists()
    tables = asyncio.run(_tables(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'fresh.db'}"))
    assert set(Base.metadata.tables) | {"alembic_version"} == tables


def test_migrate_creates_the_schema_on_postgresql(tmp_path: Path) -> None:
    _require("PostgreSQL", PG_ADMIN_URL, 5432)
    name = f"aisha_cli_{uuid.uuid4().hex[:10]}"

    asyncio.run(execute_autocommit(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    try:
        url = urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}").geturl()
        plain = url.replace("postgresql+asyncpg://", "postgresql://")
        result = _migrate(plain, tmp_path)
        assert result.returncode == 0, result.stderr
        assert set(Base.metadata.tables) | {"alembic_version"} == asyncio.run(_tables(url))
        again = _migrate(plain, tmp_path)  # already at head: nothing to do, no error
        assert again.returncode == 0, again.stderr
    finally:
        asyncio.run(execute_autocommit(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.parametrize("bad", ["mysql://x/y", "not a url"])
def test_migrate_with_a_bad_url_is_one_line(tmp_path: Path, bad: str) -> None:
    result = _migrate(bad, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr


def test_ledger_verify_names_the_account_that_does_not_add_up(tmp_path: Path) -> None:
    url = "sqlite:///./data/ledger.db"
    assert _migrate(url, tmp_path).returncode == 0
    path = tmp_path / "data" / "ledger.db"

    async def books(statements: list[str]) -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    now = "'2026-01-01 00:00:00+00:00'"
    asyncio.run(
        books(
            [
                f"INSERT INTO users (telegram_id, language, is_blocked, created_at, last_seen_at) VALUES (7, 'en', 0, {now}, {now})",
                f"INSERT INTO users (telegram_id, language, is_blocked, created_at, last_seen_at) VALUES (8, 'en', 0, {now}, {now})",
                f"INSERT INTO credit_accounts (user_id, balance, last_seq, updated_at) VALUES (7, 10, 1, {now})",
                f"INSERT INTO credit_accounts (user_id, balance, last_seq, updated_at) VALUES (8, 5, 1, {now})",
                "INSERT INTO credit_entries (id, user_id, kind, amount, balance_after, description, description_args,"
                f" idempotency_key, seq, created_at) VALUES ('00000000000000000000000000000001', 7, 'bonus', 10, 10,"
                f" 'ledger.bonus', '{{}}', 'k1', 1, {now})",
                "INSERT INTO credit_entries (id, user_id, kind, amount, balance_after, description, description_args,"
                f" idempotency_key, seq, created_at) VALUES ('00000000000000000000000000000002', 8, 'bonus', 5, 5,"
                f" 'ledger.bonus', '{{}}', 'k2', 1, {now})",
            ]
        )
    )

    def verify() -> subprocess.CompletedProcess[str]:
        return run_aisha("ledger", "verify", database_url=url, cwd=tmp_path)

    good = verify()
    assert good.returncode == 0, good.stderr
    assert "all 2 accounts add up" in good.stdout

    asyncio.run(
        books(["UPDATE credit_accounts SET balance = 99 WHERE user_id = 8"])
    )  # someone edited a balance
    bad = verify()
    assert bad.returncode == 1
    assert "account 8: balance 99, entries sum 5" in bad.stderr
    assert "account 7" not in bad.stderr
