"""FSM storage in the database, for the embedded mode (no Redis): wizards survive a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, StateType, StorageKey
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.db.context import current_session
from aisha.db.models import FsmRecord
from aisha.db.session import add_as_loaded, unit_of_work


def storage_key(key: StorageKey) -> str:
    """The record's key for aiogram's StorageKey."""
    parts = (key.bot_id, key.chat_id, key.user_id, key.thread_id, key.business_connection_id, key.destiny)
    return ":".join("" if part is None else str(part) for part in parts)


# Records read by the update's claim (bot/claim.py), by key, until the storage first reads them.
_CLAIMED = "aisha.fsm_claimed"


class SqlStorage(BaseStorage):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _read(self, key: StorageKey) -> FsmRecord | None:
        session = current_session.get()
        if session is not None:
            record_key = storage_key(key)
            claimed: dict[str, FsmRecord | None] = session.info.get(_CLAIMED, {})
            if record_key in claimed:  # read by the update's claim: its first read is free
                return claimed.pop(record_key)
            record = await session.get(FsmRecord, record_key, populate_existing=True)
            if record is None:
                _absent(session).add(record_key)
            return record
        async with self._sessions() as own:
            return await own.get(FsmRecord, storage_key(key))

    async def _write(self, key: StorageKey, **values: Any) -> None:
        # Inside an update, write in its transaction: on SQLite a second connection would wait
        # for the lock that this very update holds.
        session = current_session.get()
        if session is not None:
            await self._upsert(session, storage_key(key), values)
            return
        async with unit_of_work(self._sessions) as own:
            await self._upsert(own, storage_key(key), values)

    @staticmethod
    async def _upsert(session: AsyncSession, key: str, values: dict[str, Any]) -> None:
        absent = _absent(session)
        # A key this update found absent isn't read again (aiogram's clear() is two writes, each
        # of which would read it): nobody else writes it while the user's lock is held.
        record = None if key in absent else await session.get(FsmRecord, key)
        state = values.get("state", record.state if record else None)
        data = values.get("data", record.data if record else {})
        if state is None and not data:
            if record is None:
                return  # nothing stored, nothing to store
            await session.delete(record)  # nothing left to remember
            absent.add(key)
        elif record is None:
            session.add(FsmRecord(key=key, state=state, data=data))
            absent.discard(key)
        else:
            record.state, record.data = state, data
        await session.flush()

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        await self._write(key, state=value)

    async def get_state(self, key: StorageKey) -> str | None:
        record = await self._read(key)
        return record.state if record else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self._write(key, data=dict(data))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        record = await self._read(key)
        return dict(record.data) if record else {}

    async def close(self) -> None:
        return None


def remember_read(session: AsyncSession, key: str, row: dict[str, Any] | None) -> None:
    """The record of `key` as this session's transaction has just read it (None: there is none),
    for the storage's next read in the update (the state aiogram reads before the handlers)."""
    record = None if row is None else add_as_loaded(session, FsmRecord(**row))
    if record is None:
        _absent(session).add(key)
    session.info.setdefault(_CLAIMED, {})[key] = record


def _absent(session: AsyncSession) -> set[str]:
    """Keys known to have no record in this session's update."""
    absent: set[str] = session.info.setdefault("aisha.fsm_absent", set())
    return absent


class UserEventIsolation(BaseEventIsolation):
    """One user's updates in one chat are handled one after another in this process, each until
    its transaction has committed: aiogram reads the wizard state inside this lock, and handlers
    answer before the commit, so without it a quick next message could be read against the state
    the previous step had not yet saved. Unlike aiogram's SimpleEventIsolation it forgets a lock
    nobody waits for, so a long-running bot keeps no lock per user it ever met."""

    def __init__(self) -> None:
        self._locks: dict[StorageKey, tuple[asyncio.Lock, int]] = {}  # lock, updates holding or waiting

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            # Closed meanwhile (shutdown) leaves nothing to count.
            lock, users = self._locks.get(key, (lock, 0))
            if users == 1:
                del self._locks[key]
            elif users > 1:
                self._locks[key] = (lock, users - 1)

    async def close(self) -> None:
        self._locks.clear()
