"""The intent a top-up resumes lives in the FSM storage beside the wizard's state, in Redis and in
the database alike: a wizard's clear() leaves it, a restart keeps it, and it expires."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey

from aisha.bot import resume
from aisha.bot.app import DestinyKeyBuilder, create_fsm_storage
from aisha.config import load_settings
from tests.conftest import Database

NOW = datetime(2026, 6, 1, tzinfo=UTC)


async def _storages(sqlite_db: Database, redis_url: str | None) -> list[BaseStorage]:
    """Two storages on the same data: one process, and another (or the same after a restart)."""
    settings = load_settings(redis_url=redis_url, database_url=sqlite_db.url)
    return [create_fsm_storage(settings, sqlite_db.sessions) for _ in range(2)]


async def test_in_redis(redis_url: str, sqlite_db: Database) -> None:
    await _check_all(await _storages(sqlite_db, redis_url))


def test_redis_keys_of_wizards_are_aiograms_own() -> None:
    """Wizards in flight when this is deployed keep their state: only the intent's keys are new."""
    key = StorageKey(bot_id=1, chat_id=10, user_id=10)
    assert (
        DestinyKeyBuilder().build(key, "data") == DefaultKeyBuilder().build(key, "data") == "fsm:10:10:data"
    )
    intent = replace(key, destiny=resume.DESTINY)
    assert DestinyKeyBuilder().build(intent, "data") == "fsm:10:10:resume:data"


async def test_in_the_database(sqlite_db: Database) -> None:
    await _check_all(await _storages(sqlite_db, None))


async def _check_all(storages: list[BaseStorage]) -> None:
    try:
        await _outlives_the_wizard_and_a_restart_then_expires(storages)
        await _a_newer_intent_replaces_the_older_one(storages)
    finally:
        for storage in storages:
            await storage.close()


async def _outlives_the_wizard_and_a_restart_then_expires(
    storages: list[BaseStorage],
) -> None:
    first, second = storages
    key = StorageKey(bot_id=1, chat_id=10, user_id=10)
    wizard = FSMContext(storage=first, key=key)
    await wizard.set_state("AvatarWizard:uploading")
    await wizard.update_data(avatar_id="a1")
    remembered = await resume.remember(
        wizard, kind=resume.IntentKind.AVATAR, data={"avatar_id": "a1"}, now=NOW
    )
    await wizard.clear()  # the wizard ends: the intent stays

    after_restart = FSMContext(storage=second, key=key)
    assert await after_restart.get_state() is None
    assert await resume.current(after_restart, now=NOW) == remembered
    button = resume.Resume(kind=remembered.kind, token=remembered.token)
    assert await resume.lookup(after_restart, button, now=NOW) == (resume.Lookup.FOUND, remembered)
    later = NOW + resume.INTENT_TTL
    assert await resume.current(after_restart, now=later) is None
    assert await resume.lookup(after_restart, button, now=later) == (resume.Lookup.EXPIRED, None)
    assert await resume.lookup(after_restart, button, now=NOW) == (resume.Lookup.STALE, None)  # forgotten


async def _a_newer_intent_replaces_the_older_one(storages: list[BaseStorage]) -> None:
    state = FSMContext(storage=storages[0], key=StorageKey(bot_id=1, chat_id=11, user_id=11))
    older = await resume.remember(state, kind=resume.IntentKind.GENERATION, data={"id": "d1"}, now=NOW)
    newer = await resume.remember(state, kind=resume.IntentKind.GENERATION, data={"id": "d2"}, now=NOW)
    stale = resume.Resume(kind=older.kind, token=older.token)
    assert await resume.lookup(state, stale, now=NOW) == (resume.Lookup.STALE, None)
    assert await resume.current(state, now=NOW + timedelta(hours=1)) == newer
