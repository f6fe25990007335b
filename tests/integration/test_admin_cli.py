"""`aisha admin ...` as an operator runs it, on SQLite."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from aisha.admin.models import Broadcast, BroadcastStatus
from aisha.billing.models import CreditEntry, EntryKind
from aisha.billing.service import LedgerService
from aisha.clock import SystemClock
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.users.models import User
from tests.conftest import run_aisha


def _aisha(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_aisha(*args, database_url=database_url, cwd=cwd)


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    assert _aisha(url, tmp_path, "migrate").returncode == 0

    async def seed() -> None:
        engine = create_engine(url)
        try:
            sessions = create_session_factory(engine)
            ledger = LedgerService(clock=SystemClock(), hold_ttl=timedelta(hours=6))
            async with unit_of_work(sessions) as session:
                session.add(User(telegram_id=5001, username="alice", first_name="Alice", language="en"))
                session.add(User(telegram_id=5002, first_name="Bob", language="ru"))
                await session.flush()
                await ledger.credit(session=session, user_id=5001, amount=100, key="seed")
        finally:
            await engine.dispose()

    asyncio.run(seed())
    return url


async def _query(url: str, statement: object) -> list[object]:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            return list(await session.scalars(statement))  # type: ignore[call-overload]
    finally:
        await engine.dispose()


def test_grant_take_and_user_card(database: str, tmp_path: Path) -> None:
    granted = _aisha(
        database, tmp_path, "admin", "grant", "@alice", "25", "--reason", "goodwill", "--key", "k1"
    )
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip().splitlines()[-1] == "granted 25 for 5001; balance 125"
    again = _aisha(database, tmp_path, "admin", "grant", "5001", "25", "--reason", "goodwill", "--key", "k1")
    assert "nothing changed" in again.stdout and "balance 125" in again.stdout

    refused = _aisha(database, tmp_path, "admin", "take", "5002", "1", "--reason", "test")
    assert refused.returncode == 2
    assert "refused: the balance is 0, less than 1" in refused.stderr

    taken = _aisha(database, tmp_path, "admin", "take", "5001", "5", "--reason", "fix")
    assert taken.stdout.strip().splitlines()[-1] == "took 5 for 5001; balance 120"

    card = _aisha(database, tmp_path, "admin", "user", "5001")
    assert card.returncode == 0, card.stderr
    assert "username: @alice" in card.stdout and "balance: 120 (held 0)" in card.stdout
    entries = asyncio.run(
        _query(database, select(CreditEntry.amount).where(CreditEntry.kind == EntryKind.ADJUSTMENT))
    )
    assert sorted(entries) == [-5, 25]  # type: ignore[type-var]

    missing = _aisha(database, tmp_path, "admin", "user", "@nobody")
    assert missing.returncode == 2 and "no user @nobody" in missing.stderr


def test_block_stats_and_broadcast(database: str, tmp_path: Path) -> None:
    assert (
        _aisha(database, tmp_path, "admin", "block", "5002").stdout.strip().splitlines()[-1] == "blocked 5002"
    )
    blocked = asyncio.run(_query(database, select(User.telegram_id).where(User.is_blocked.is_(True))))
    assert blocked == [5002]
    assert (
        _aisha(database, tmp_path, "admin", "unblock", "5002").stdout.strip().splitlines()[-1]
        == "unblocked 5002"
    )

    stats = _aisha(database, tmp_path, "admin", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "users: 2" in stats.stdout and "topped up: 100" in stats.stdout
    assert "generation" in stats.stdout

    queued = _aisha(database, tmp_path, "admin", "broadcast", "Hello from the CLI")
    assert queued.returncode == 0, queued.stderr
    rows = asyncio.run(_query(database, select(Broadcast)))
    assert [(r.text, r.status) for r in rows] == [("Hello from the CLI", BroadcastStatus.RUNNING)]  # type: ignore[attr-defined]
    assert "stopped 1" in _aisha(database, tmp_path, "admin", "broadcast-stop").stdout


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<b>Sale today", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<div>Sale</div>", 'Unsupported start tag "div" at byte offset 0'),
    ],
)
def test_a_broadcast_telegram_would_refuse_is_not_queued(
    database: str, tmp_path: Path, text: str, reason: str
) -> None:
    refused = _aisha(database, tmp_path, "admin", "broadcast", text)
    assert refused.returncode == 2
    assert "refused, nothing queued: Telegram would not send this text" in refused.stderr
    assert reason in refused.stderr
    assert asyncio.run(_query(database, select(Broadcast))) == []

    queued = _aisha(database, tmp_path, "admin", "broadcast", "<b>Sale</b> today")
    assert queued.returncode == 0, queued.stderr
    rows = asyncio.run(_query(database, select(Broadcast.text)))
    assert rows == ["<b>Sale</b> today"]
