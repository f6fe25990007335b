"""The per-user rate limit counted in Redis (INCR + EXPIRE on one key per user and window), so
every process counts together. The rule is `aisha.throttle`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.clock import Clock
from aisha.throttle import Decision, current_window, decide

if TYPE_CHECKING:
    from redis.asyncio import Redis  # imported in from_url: only a process with Redis loads it


class RedisThrottle:
    def __init__(
        self, redis: Redis, *, rate: int, period: int, clock: Clock, prefix: str = "aisha:throttle"
    ) -> None:
        self._redis, self._rate, self._period, self._clock = redis, rate, period, clock
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, rate: int, period: int, clock: Clock) -> RedisThrottle:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url), rate=rate, period=period, clock=clock)

    async def hit(self, *, user_id: int) -> Decision:
        window, retry_after = current_window(self._clock, self._period)
        key = f"{self._prefix}:{user_id}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._period + 1)
            count, _ = await pipe.execute()
        return decide(int(count), self._rate, retry_after)

    async def aclose(self) -> None:
        await self._redis.aclose()
