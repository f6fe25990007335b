"""One user's updates run one after another; locks of users nobody waits for are forgotten."""

from __future__ import annotations

import asyncio

from aiogram.fsm.storage.base import StorageKey

from aisha.bot.fsm import UserEventIsolation


def _key(user_id: int) -> StorageKey:
    return StorageKey(bot_id=1, chat_id=user_id, user_id=user_id)


async def test_one_users_updates_wait_for_each_other_and_others_do_not() -> None:
    isolation = UserEventIsolation()
    order: list[str] = []

    async def update(name: str, user_id: int, seconds: float) -> None:
        async with isolation.lock(_key(user_id)):
            order.append(f"{name} starts")
            await asyncio.sleep(seconds)
            order.append(f"{name} ends")

    await asyncio.gather(update("a1", 1, 0.05), update("a2", 1, 0), update("b", 2, 0))

    assert order.index("a1 ends") < order.index("a2 starts")
    assert order.index("b ends") < order.index("a1 ends")  # another user didn't wait
    assert isolation._locks == {}  # nothing kept for users with nothing in flight


async def test_a_failing_update_frees_the_lock() -> None:
    isolation = UserEventIsolation()
    try:
        async with isolation.lock(_key(1)):
            raise RuntimeError("handler failed")
    except RuntimeError:
        pass
    async with asyncio.timeout(1), isolation.lock(_key(1)):
        pass
    assert isolation._locks == {}
