"""Per-user operation locks: one user's operations that start paid work or erase data (starting a
training, a generation or a transcription, /delete_me) run one at a time, also when two requests
reach two processes at once (two `aisha api` behind a balancer, a double press).

The backend is a `LockBackend`: in Redis when REDIS_URL is set (`aisha.providers.redis_locks`),
in this process's memory otherwise (one process: nothing else to race with). A lock is never
waited for: the second request is refused at once and the user asked to try again in a moment.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.db.session import at_end
from aisha.users.ports import LockBackend

log = structlog.get_logger(__name__)

# Longer than any start takes; the lock of a process that died frees itself after it.
LOCK_TTL_MS = 30_000


class MemoryLocks:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}  # key -> (token, monotonic deadline)

    async def acquire(self, key: str, token: str, ttl_ms: int) -> bool:
        # No await between the check and the write: atomic within the event loop.
        now = time.monotonic()
        held = self._held.get(key)
        if held is not None and held[1] > now:
            return False
        self._held[key] = (token, now + ttl_ms / 1000)
        return True

    async def release(self, key: str, token: str) -> None:
        held = self._held.get(key)
        if held is not None and held[0] == token:
            del self._held[key]

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Lease:
    key: str
    token: str


class UserLocks:
    def __init__(self, backend: LockBackend | None = None, *, ttl_ms: int = LOCK_TTL_MS) -> None:
        self._backend = backend or MemoryLocks()
        self._ttl_ms = ttl_ms

    async def acquire(self, user_id: int) -> Lease | None:
        """The user's lock, or None while another request holds it."""
        lease = Lease(f"aisha:lock:user:{user_id}", secrets.token_hex(16))
        return lease if await self._backend.acquire(lease.key, lease.token, self._ttl_ms) else None

    async def release(self, lease: Lease) -> None:
        try:
            await self._backend.release(lease.key, lease.token)
        except Exception as exc:  # Redis gone: the lock expires by itself
            log.warning("lock.release_failed", error=type(exc).__name__)

    async def hold_for(self, session: AsyncSession, *, user_id: int) -> bool:
        """Take the user's lock until this session's unit of work ends (committed or rolled back),
        so the next request sees what this one wrote. False: another request holds it."""
        lease = await self.acquire(user_id)
        if lease is None:
            return False
        at_end(session, lambda: self.release(lease))
        return True

    async def aclose(self) -> None:
        await self._backend.aclose()
