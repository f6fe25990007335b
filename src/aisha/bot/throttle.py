"""Per-user rate limits: a fixed window of `rate` updates per `period` seconds.

In Redis (INCR + EXPIRE on one key per user and window) when REDIS_URL is set, so every process
counts together; in this process's memory otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from redis.asyncio import Redis

from aisha.clock import Clock


class Verdict(StrEnum):
    ALLOW = "allow"
    WARN = "warn"  # the first update over the limit in this window: tell the user once
    DROP = "drop"  # later ones: ignore silently


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_after: int  # seconds until the window ends


def _decide(count: int, rate: int, retry_after: int) -> Decision:
    if count <= rate:
        return Decision(Verdict.ALLOW, retry_after)
    return Decision(Verdict.WARN if count == rate + 1 else Verdict.DROP, retry_after)


class Throttle(Protocol):
    async def hit(self, *, user_id: int) -> Decision: ...

    async def aclose(self) -> None: ...


class MemoryThrottle:
    def __init__(self, *, rate: int, period: int, clock: Clock) -> None:
        self._rate, self._period, self._clock = rate, period, clock
        self._counts: dict[int, tuple[int, int]] = {}  # user -> (window, count)

    async def hit(self, *, user_id: int) -> Decision:
        now = self._clock.now().timestamp()
        window = int(now // self._period)
        retry_after = max(1, int((window + 1) * self._period - now + 0.999))
        current, count = self._counts.get(user_id, (window, 0))
        count = count + 1 if current == window else 1
        self._counts[user_id] = (window, count)
        if len(self._counts) > 10_000:  # forget windows that are over
            self._counts = {u: v for u, v in self._counts.items() if v[0] == window}
        return _decide(count, self._rate, retry_after)

    async def aclose(self) -> None:
        return None


class RedisThrottle:
    def __init__(
        self, redis: Redis, *, rate: int, period: int, clock: Clock, prefix: str = "aisha:throttle"
    ) -> None:
        self._redis, self._rate, self._period, self._clock = redis, rate, period, clock
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, rate: int, period: int, clock: Clock) -> RedisThrottle:
        return cls(Redis.from_url(url), rate=rate, period=period, clock=clock)

    async def hit(self, *, user_id: int) -> Decision:
        now = self._clock.now().timestamp()
        window = int(now // self._period)
        retry_after = max(1, int((window + 1) * self._period - now + 0.999))
        key = f"{self._prefix}:{user_id}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._period + 1)
            count, _ = await pipe.execute()
        return _decide(int(count), self._rate, retry_after)

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_throttle(*, redis_url: str | None, rate: int, period: int, clock: Clock) -> Throttle | None:
    """None when the rate is 0 (throttling off)."""
    if rate <= 0:
        return None
    if redis_url:
        return RedisThrottle.from_url(redis_url, rate=rate, period=period, clock=clock)
    return MemoryThrottle(rate=rate, period=period, clock=clock)
