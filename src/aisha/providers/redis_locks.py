"""Per-user locks shared by processes, in Redis: SET NX PX with a random token, released by a
compare-and-delete script, so a holder whose lock expired never frees somebody else's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.users.locks import MemoryLocks, UserLocks

if TYPE_CHECKING:
    # Imported where a client is made: a process with no REDIS_URL never loads redis (6 MB here).
    from redis.asyncio import Redis

RELEASE_SCRIPT = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


class RedisLocks:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._release = redis.register_script(RELEASE_SCRIPT)

    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        return bool(await self._redis.set(key, token, nx=True, px=ttl_ms))

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[key], args=[token])

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_user_locks(redis_url: str | None) -> UserLocks:
    """In Redis when REDIS_URL is set; in this process's memory otherwise."""
    if not redis_url:
        return UserLocks(MemoryLocks())
    from redis.asyncio import Redis

    return UserLocks(RedisLocks(Redis.from_url(redis_url)))
