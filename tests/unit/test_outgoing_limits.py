"""The outgoing-message limiter: which requests it spaces, and how."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiogram.methods import AnswerCallbackQuery, EditMessageText, SendChatAction, SendMessage, SendPhoto

from aisha.bot import outgoing
from aisha.bot.outgoing import Limits, LocalSlots, OutgoingLimiter, RedisSlots, _chat_of
from aisha.config import load_settings


def test_limits_from_settings_are_spacings() -> None:
    limits = Limits.from_settings(load_settings())
    assert limits == Limits(overall=1 / 30, private_chat=1.0, group_chat=3.0)
    assert limits.for_chat(42) == 1.0
    assert limits.for_chat(-100123) == 3.0 and limits.for_chat("@channel") == 3.0
    off = Limits.from_settings(load_settings(telegram_private_chat_per_second=0))
    assert off.private_chat == 0


def test_only_messages_to_a_chat_are_limited() -> None:
    assert _chat_of(SendMessage(chat_id=5, text="hi")) == 5
    assert _chat_of(SendPhoto(chat_id=-7, photo="file-id")) == -7
    assert _chat_of(EditMessageText(chat_id=5, message_id=1, text="x")) == 5
    assert _chat_of(EditMessageText(inline_message_id="abc", text="x")) is None
    assert _chat_of(SendChatAction(chat_id=5, action="typing")) is None
    assert _chat_of(AnswerCallbackQuery(callback_query_id="1")) is None


async def test_local_slots_space_a_chat_and_leave_others_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock stands still: the waits are exact, however slowly a loaded machine runs this.
    monkeypatch.setattr(outgoing, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    slots = LocalSlots()
    waits = [await slots.reserve("chat:1", 1.0) for _ in range(3)]
    assert waits == [0, 1.0, 2.0]
    assert await slots.reserve("chat:2", 1.0) == 0


async def test_a_waiting_chat_does_not_hold_up_another() -> None:
    limiter = OutgoingLimiter(LocalSlots(), Limits(overall=0.01, private_chat=0.3, group_chat=3.0))
    done: dict[str, float] = {}
    started = time.monotonic()

    async def send(name: str, chat_id: int) -> None:
        await limiter.acquire(chat_id)
        done[name] = time.monotonic() - started

    await asyncio.gather(send("a1", 1), send("a2", 1), send("b", 2))
    assert done["a2"] >= 0.29
    # b waited only for the overall spacing: it was through before a2's chat slot came round.
    assert done["b"] < done["a2"]


async def test_an_unreachable_redis_lets_messages_through() -> None:
    slots = RedisSlots("redis://127.0.0.1:1/0")
    try:
        assert await slots.reserve("chat:1", 1.0) == 0
    finally:
        await slots.aclose()
