"""No token or key ever appears in a log line."""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from aiogram import Bot, Dispatcher, Router
from aiogram.types import Message, Update

from aisha.bot.metrics import ObserveUpdateMiddleware
from aisha.logs import MASK, configure_logging
from aisha.metrics import Metrics

TOKEN = "123456789:AAH-secret-bot-token-value"
FAL_KEY = "fal-key-id:fal-key-secret"


@pytest.fixture(autouse=True)
def _reset_logging() -> None:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_secrets_are_masked_in_structlog_and_stdlib_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(secrets=[TOKEN, FAL_KEY])
    structlog.get_logger("t").info(
        "calling", url=f"https://api.telegram.org/bot{TOKEN}/getMe", nested={"k": FAL_KEY}
    )
    logging.getLogger("aiohttp.client").warning(
        "request to https://api.telegram.org/bot%s/getMe failed", TOKEN
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert TOKEN not in line and FAL_KEY not in line and "fal-key-secret" not in line
        assert MASK in line
        json.loads(line)  # one JSON object per line
    assert json.loads(lines[0])["event"] == "calling"


async def test_lines_logged_while_handling_an_update_carry_its_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(secrets=[TOKEN])
    metrics = Metrics()
    dispatcher = Dispatcher()
    dispatcher.update.outer_middleware(ObserveUpdateMiddleware(metrics))
    router = Router()

    @router.message()
    async def handler(message: Message) -> None:
        structlog.get_logger("handler").info("handler.ran", url=f"https://api.telegram.org/bot{TOKEN}/getMe")
        logging.getLogger("library").warning("a library speaks")

    dispatcher.include_router(router)
    update = Update.model_validate(
        {
            "update_id": 4242,
            "message": {
                "message_id": 1,
                "date": 0,
                "chat": {"id": 77, "type": "private"},
                "from": {"id": 77, "is_bot": False, "first_name": "Alice"},
                "text": "hello",
            },
        }
    )
    bot = Bot(token=TOKEN)
    try:
        await dispatcher.feed_update(bot, update)
    finally:
        await bot.session.close()
    structlog.get_logger("after").info("after.update")

    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    by_event = {line["event"]: line for line in lines}
    for event in ("handler.ran", "a library speaks"):
        assert by_event[event]["update_id"] == 4242
        assert by_event[event]["user_id"] == 77
    assert "update_id" not in by_event["after.update"]  # unbound once the update is done
    assert all(TOKEN not in json.dumps(line) for line in lines)
    assert (
        metrics.registry.get_sample_value("aisha_updates_total", {"type": "message", "outcome": "handled"})
        == 1
    )
