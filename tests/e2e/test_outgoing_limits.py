"""Outgoing messages under Telegram's limits: a 429 is waited out and the message arrives once;
a burst to one chat is spaced a second apart, also when two processes send through Redis."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from tests.conftest import Database
from tests.e2e.conftest import say

USER = FakeUser(id=6101, first_name="Rita")


@pytest.fixture
def db(sqlite_db: Database) -> Database:
    """The limits have nothing to do with the database: one backend is enough."""
    return sqlite_db


PER_CHAT = {"telegram_private_chat_per_second": 1, "telegram_group_chat_per_minute": 20}


def _sent_to(telegram: FakeTelegramServer, chat_id: int) -> list[Any]:
    return [c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]


async def test_a_429_is_waited_out_and_the_message_arrives_once(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], telegram: FakeTelegramServer
) -> None:
    await start_app(make_settings())
    telegram.fail_next("sendMessage", error_code=429, retry_after=1)

    welcome = await say(telegram, USER, "/start")
    if welcome.failed:  # the refused attempt is recorded too: wait for the one after it
        welcome = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == USER.id)

    calls = _sent_to(telegram, USER.id)
    assert [c.failed for c in calls] == [True, False]
    assert (calls[1].time - calls[0].time).total_seconds() >= 0.95
    assert len(telegram.chat_messages(USER.id)) == 2  # the user's /start and one welcome


async def test_a_burst_to_one_chat_is_spaced_a_second_apart(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], telegram: FakeTelegramServer
) -> None:
    app: Runtime = await start_app(make_settings(**PER_CHAT))
    other = USER.id + 1
    started = asyncio.get_running_loop().time()
    await asyncio.gather(
        *(app.services.messenger.send_text(USER.id, f"message {n}") for n in range(3)),
        app.services.messenger.send_text(other, "another chat is not held up"),
    )
    times = [c.time for c in _sent_to(telegram, USER.id)]
    assert len(times) == 3
    assert (times[2] - times[0]).total_seconds() >= 1.9
    assert all((b - a).total_seconds() >= 0.9 for a, b in itertools.pairwise(times))
    other_call = _sent_to(telegram, other)[0]
    assert (other_call.time - times[0]).total_seconds() < 0.5
    assert asyncio.get_running_loop().time() - started < 4


async def test_two_processes_share_the_limits_through_redis(
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    telegram: FakeTelegramServer,
    redis_url: str,
) -> None:
    settings = make_settings(redis_url=redis_url, **PER_CHAT)
    first: Runtime = await start_app(settings)
    second = Runtime(make_settings(redis_url=redis_url, **PER_CHAT))  # a second process' Bot
    try:
        await asyncio.gather(
            first.services.messenger.send_text(USER.id, "from the first"),
            second.services.messenger.send_text(USER.id, "from the second"),
            first.services.messenger.send_text(USER.id, "from the first again"),
        )
    finally:
        await second.bot.session.close()
        await second.limiter.aclose()
        await second.services.aclose()
    times = sorted(c.time for c in _sent_to(telegram, USER.id))
    assert len(times) == 3
    assert all((b - a).total_seconds() >= 0.9 for a, b in itertools.pairwise(times))
