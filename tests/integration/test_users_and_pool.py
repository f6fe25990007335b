"""A returning user costs one read; the row still follows Telegram's profile and last-seen time.
Pooled connections are tested only after idling, and a dead one is replaced, not used."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from aisha.billing import LedgerService
from aisha.clock import FrozenClock
from aisha.db import session as db_session
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.users.models import User
from aisha.users.service import LAST_SEEN_RESOLUTION, TelegramProfile, UserService
from tests.conftest import Database

USER = 5151


def profile(first_name: str = "Ann", username: str | None = "ann") -> TelegramProfile:
    return TelegramProfile(USER, username, first_name, None, "en")


async def stored_user(db: Database) -> tuple[str | None, str | None, object]:
    async with unit_of_work(db.sessions) as session:
        row = (
            await session.execute(
                select(User.first_name, User.username, User.last_seen_at).where(User.telegram_id == USER)
            )
        ).one()
    return row.first_name, row.username, row.last_seen_at


async def test_returning_user_follows_profile_and_last_seen(db: Database) -> None:
    clock = FrozenClock()
    users = UserService(clock=clock, ledger=LedgerService(clock=clock, hold_ttl=timedelta(hours=1)))

    async def contact(who: TelegramProfile) -> tuple[User, bool]:
        async with unit_of_work(db.sessions) as session:
            return await users.register_or_touch(session, profile=who, locale="en")

    first, created = await contact(profile())
    assert created and first.first_name == "Ann"
    registered_at = clock.now()

    # Same profile, seconds later: nothing to write; the stored time stays.
    clock.advance(timedelta(seconds=5))
    again, created = await contact(profile())
    assert not created and again.first_name == "Ann"
    assert await stored_user(db) == ("Ann", "ann", registered_at)

    # A new name is stored at once, and the user handed to the handler has it.
    clock.advance(timedelta(seconds=5))
    renamed, _ = await contact(profile(first_name="Anna", username=None))
    assert (renamed.first_name, renamed.username) == ("Anna", None)
    assert await stored_user(db) == ("Anna", None, clock.now())

    # Seen again after the resolution: the time moves.
    clock.advance(LAST_SEEN_RESOLUTION)
    await contact(profile(first_name="Anna", username=None))
    assert await stored_user(db) == ("Anna", None, clock.now())


@pytest.mark.postgres
async def test_a_connection_cut_while_idle_is_replaced(
    postgres_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(postgres_db.url, pool_size=2)
    sessions = create_session_factory(engine)
    try:
        async with unit_of_work(sessions) as session:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with unit_of_work(postgres_db.sessions) as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has idled long enough
        async with unit_of_work(sessions) as session:
            again = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert again != pid
    finally:
        await engine.dispose()
