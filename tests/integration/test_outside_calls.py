"""The rule: no outside call while the calling task holds uncommitted writes (db/session.py),
and the test suite's guard that enforces it on every HTTP and storage call (tests/conftest.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from aisha.db.models import ProcessedUpdate
from aisha.db.session import OutsideCallInTransaction, refuse_outside_call, uncommitted_writes, unit_of_work
from aisha.storage.local import LocalStorage
from tests.conftest import Database


async def test_a_write_marks_the_task_until_the_transaction_ends(db: Database) -> None:
    async with unit_of_work(db.sessions) as session:
        await session.execute(select(ProcessedUpdate))
        assert not uncommitted_writes()  # reading is not writing
        session.add(ProcessedUpdate(update_id=1, processed_at=_now()))
        await session.flush()
        assert uncommitted_writes()
        with pytest.raises(OutsideCallInTransaction, match="commit first"):
            refuse_outside_call("a test call")
    assert not uncommitted_writes()
    refuse_outside_call("a test call")  # committed: allowed


async def test_a_rolled_back_transaction_no_longer_counts(db: Database) -> None:
    async with db.sessions() as session:
        await session.execute(update(ProcessedUpdate).values(update_id=ProcessedUpdate.update_id))
        assert uncommitted_writes()
        await session.rollback()
        assert not uncommitted_writes()


async def test_another_task_holding_writes_does_not_block_this_one(db: Database) -> None:
    wrote, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with unit_of_work(db.sessions) as session:
            session.add(ProcessedUpdate(update_id=2, processed_at=_now()))
            await session.flush()
            wrote.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await wrote.wait()
    assert not uncommitted_writes()
    release.set()
    await task


async def test_the_guard_refuses_http_and_storage_calls_inside_a_writing_transaction(
    db: Database, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path)
    async with unit_of_work(db.sessions) as session:
        session.add(ProcessedUpdate(update_id=3, processed_at=_now()))
        await session.flush()
        with pytest.raises(OutsideCallInTransaction):
            await storage.put("a/b.txt", b"x", content_type="text/plain")
        async with httpx.AsyncClient() as http:
            with pytest.raises(OutsideCallInTransaction):
                await http.get("http://127.0.0.1:9/")
    await storage.put("a/b.txt", b"x", content_type="text/plain")
    assert await storage.get("a/b.txt") == b"x"


def _now() -> datetime:
    return datetime.now(UTC)
