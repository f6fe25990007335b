"""What the users feature needs from outside: where per-user locks are kept (this process's
memory, `users.locks.MemoryLocks`, or Redis, `aisha.providers.redis_locks.RedisLocks`)."""

from __future__ import annotations

from typing import Protocol


class LockBackend(Protocol):
    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        """Take `key` for `ttl_ms` under `token`; False while somebody else holds it."""
        ...

    async def release(self, key: str, token: str) -> None:
        """Free `key` only if it is still held under `token`."""
        ...

    async def aclose(self) -> None: ...
