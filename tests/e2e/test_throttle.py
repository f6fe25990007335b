"""Per-user rate limits as a hasty user sees them: a polite notice once, then silence until the
window ends; in memory and in Redis (shared by every process)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aisha.clock import FrozenClock
from aisha.providers.redis_throttle import RedisThrottle
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.throttle import MemoryThrottle, Verdict
from tests.e2e.conftest import eventually, press, say

ADMIN = FakeUser(id=900, first_name="Op", language_code="en")
HASTY = FakeUser(id=6001, first_name="Hasty", language_code="en")


def _texts_to(telegram: FakeTelegramServer, chat_id: int) -> list[str]:
    return [c.params["text"] for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]


async def _flood_and_check(telegram: FakeTelegramServer) -> None:
    for _ in range(6):
        telegram.queue_update(telegram.message_update(HASTY, "/balance"))
    await eventually(lambda: _count_is(telegram, 4))
    await telegram.wait_until_handled()
    texts = _texts_to(telegram, HASTY.id)
    assert len(texts) == 4
    assert len([t for t in texts if "Balance" in t]) == 3
    notice = [t for t in texts if "Too many requests" in t]
    assert len(notice) == 1
    assert notice[0].startswith("Too many requests. Please wait ")
    # The operator is never throttled.
    for _ in range(5):
        telegram.queue_update(telegram.message_update(ADMIN, "/balance"))
    await eventually(lambda: _async(len([t for t in _texts_to(telegram, ADMIN.id) if "Balance" in t]) == 5))


async def _count_is(telegram: FakeTelegramServer, n: int) -> bool:
    return len(_texts_to(telegram, HASTY.id)) >= n


async def _async(value: bool) -> bool:
    return value


async def test_a_flood_gets_one_polite_notice_and_then_silence(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    await start_app(make_settings(admin_ids=str(ADMIN.id), throttle_rate=3, throttle_period_seconds=3600))
    await _flood_and_check(telegram)


async def test_a_flood_is_counted_in_redis(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    redis_url: str,
) -> None:
    settings = make_settings(
        admin_ids=str(ADMIN.id), throttle_rate=3, throttle_period_seconds=3600, redis_url=redis_url
    )
    app: Runtime = await start_app(settings)
    assert isinstance(app.services.throttle, RedisThrottle)
    await _flood_and_check(telegram)


async def test_a_throttled_button_press_is_answered_in_the_button(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    app: Runtime = await start_app(make_settings(throttle_rate=1, throttle_period_seconds=3600))
    assert app.services.throttle is not None
    balance = await say(telegram, HASTY, "/balance")
    press(telegram, HASTY, "topup", balance)
    answer = await telegram.wait_for_call("answerCallbackQuery")
    assert answer.params["text"].startswith("Too many requests. Please wait ")
    press(telegram, HASTY, "topup", balance)
    await telegram.wait_until_handled()
    assert len(telegram.calls_of("answerCallbackQuery")) == 1
    assert len(_texts_to(telegram, HASTY.id)) == 1


async def test_throttle_off_when_the_rate_is_zero(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    app: Runtime = await start_app(make_settings(throttle_rate=0))
    assert app.services.throttle is None


async def test_the_window_counts_per_user_and_ends(redis_url: str) -> None:
    clock = FrozenClock(datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC))
    memory = MemoryThrottle(rate=2, period=10, clock=clock)
    redis_a = RedisThrottle.from_url(redis_url, rate=2, period=10, clock=clock)
    redis_b = RedisThrottle.from_url(redis_url, rate=2, period=10, clock=clock)
    try:
        verdicts = [(await memory.hit(user_id=1)).verdict for _ in range(4)]
        assert verdicts == [Verdict.ALLOW, Verdict.ALLOW, Verdict.WARN, Verdict.DROP]
        assert (await memory.hit(user_id=2)).verdict is Verdict.ALLOW
        # Two processes share one count in Redis.
        shared = [
            (await throttle.hit(user_id=1)).verdict for throttle in (redis_a, redis_b, redis_a, redis_b)
        ]
        assert shared == [Verdict.ALLOW, Verdict.ALLOW, Verdict.WARN, Verdict.DROP]
        decision = await redis_b.hit(user_id=1)
        assert decision.retry_after == 10
        clock.advance(timedelta(seconds=10))
        assert (await memory.hit(user_id=1)).verdict is Verdict.ALLOW
        assert (await redis_a.hit(user_id=1)).verdict is Verdict.ALLOW
    finally:
        await redis_a.aclose()
        await redis_b.aclose()
