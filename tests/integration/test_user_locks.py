"""Per-user operation locks: in Redis (shared by processes) and in this process's memory."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from aisha.db.session import unit_of_work
from aisha.providers.redis_locks import RedisLocks, create_user_locks
from aisha.users.locks import MemoryLocks, UserLocks
from tests.conftest import Database


async def _second_is_refused_until_the_first_releases(first: UserLocks, second: UserLocks) -> None:
    lease = await first.acquire(42)
    assert lease is not None
    assert await second.acquire(42) is None  # the same user: refused while held
    other = await second.acquire(43)  # another user is not affected
    assert other is not None
    await first.release(lease)
    again = await second.acquire(42)
    assert again is not None

    # A stale release (as from a holder whose lock expired and was taken since) frees nothing.
    await first.release(lease)
    assert await first.acquire(42) is None
    await second.release(again)
    await second.release(other)


# Long enough that the second try surely comes before it runs out, even on a loaded machine.
EXPIRING_TTL_MS = 1000


async def _expired_lock_frees_itself(locks: UserLocks) -> None:
    assert await locks.acquire(9) is not None  # never released: its holder died
    assert await locks.acquire(9) is None
    async with asyncio.timeout(10):  # then it runs out by itself
        while (lease := await locks.acquire(9)) is None:
            await asyncio.sleep(0.05)
    await locks.release(lease)


async def test_redis_lock_refuses_a_second_process_until_released(redis_url: str) -> None:
    first, second = create_user_locks(redis_url), create_user_locks(redis_url)  # two processes
    try:
        await _second_is_refused_until_the_first_releases(first, second)
    finally:
        await first.aclose()
        await second.aclose()


async def test_in_process_lock_refuses_a_second_request_until_released() -> None:
    backend = MemoryLocks()
    await _second_is_refused_until_the_first_releases(UserLocks(backend), UserLocks(backend))


async def test_redis_lock_expires(redis_url: str) -> None:
    locks = UserLocks(RedisLocks(Redis.from_url(redis_url)), ttl_ms=EXPIRING_TTL_MS)
    try:
        await _expired_lock_frees_itself(locks)
    finally:
        await locks.aclose()


async def test_in_process_lock_expires() -> None:
    await _expired_lock_frees_itself(UserLocks(MemoryLocks(), ttl_ms=EXPIRING_TTL_MS))


async def test_a_lock_held_for_a_unit_of_work_ends_with_it(sqlite_db: Database) -> None:
    locks = UserLocks()
    async with unit_of_work(sqlite_db.sessions) as session:
        assert await locks.hold_for(session, user_id=5)
        assert await locks.acquire(5) is None  # held while the transaction is open
    lease = await locks.acquire(5)  # released after the commit
    assert lease is not None
    await locks.release(lease)

    with pytest.raises(RuntimeError):
        async with unit_of_work(sqlite_db.sessions) as session:
            assert await locks.hold_for(session, user_id=5)
            raise RuntimeError("the handler failed")
    assert await locks.acquire(5) is not None  # and after a rollback
