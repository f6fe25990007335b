"""No token or key ever appears in a log line."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from aisha.logs import MASK, configure_logging

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
