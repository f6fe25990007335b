"""The update middleware's counters, and the ledger sums as an operator reads them."""

from __future__ import annotations

from typing import Any

import pytest
from aiogram import Bot, Dispatcher, Router
from aiogram.filters import Command
from aiogram.types import Message, Update
from prometheus_client import generate_latest

from aisha.bot.metrics import ObserveUpdateMiddleware
from aisha.metrics import Metrics, _credit_totals

TOKEN = "123456789:AAH-secret-bot-token-value"


def _message(update_id: int, text: str) -> Update:
    person: dict[str, Any] = {"id": 5, "is_bot": False, "first_name": "A"}
    return Update.model_validate(
        {
            "update_id": update_id,
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": 5, "type": "private"},
                "from": person,
                "text": text,
            },
        }
    )


async def test_outcomes_and_errors_are_counted_by_kind() -> None:
    metrics = Metrics()
    dispatcher = Dispatcher()
    dispatcher.update.outer_middleware(ObserveUpdateMiddleware(metrics))
    router = Router()

    @router.message(Command("boom"))
    async def boom(message: Message) -> None:
        raise ZeroDivisionError(f"secret {TOKEN}")  # the message never becomes a label

    @router.message(Command("ok"))
    async def ok(message: Message) -> str:
        return "done"

    dispatcher.include_router(router)
    bot = Bot(token=TOKEN)
    try:
        await dispatcher.feed_update(bot, _message(1, "/ok"))
        await dispatcher.feed_update(bot, _message(2, "nobody takes this"))
        with pytest.raises(ZeroDivisionError):
            await dispatcher.feed_update(bot, _message(3, "/boom"))
    finally:
        await bot.session.close()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("aisha_updates_total", type="message", outcome="handled") == 1
    assert sample("aisha_updates_total", type="message", outcome="unhandled") == 1
    assert sample("aisha_updates_total", type="message", outcome="error") == 1
    assert sample("aisha_errors_total", kind="ZeroDivisionError") == 1
    assert sample("aisha_update_duration_seconds_count", type="message") == 3
    assert TOKEN.encode() not in generate_latest(metrics.registry)


def test_every_held_credit_is_captured_released_or_still_held() -> None:
    # Two holds of 10: one captured for 7 (3 returned by the capture), one released; one of 5 active.
    sums = {"topup": 110, "hold": -25, "capture": 3, "release": 10, "charge": -4}
    totals = _credit_totals(sums, on_hold=5)
    assert totals == {"topped_up": 110, "held": 25, "captured": 7, "released": 13, "charged": 4}
