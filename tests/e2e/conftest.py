"""The whole app, wired as `aisha run` wires it, against the fake Telegram Bot API over HTTP."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aisha.sandbox import FakeTelegramServer
from sqlalchemy import func, select

from aisha.config import Settings, load_settings
from aisha.runtime import Role, Runtime
from tests.conftest import Database

WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


@pytest.fixture
def make_settings(telegram: FakeTelegramServer, db: Database, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "bot_token": telegram.token,
            "telegram_api_url": telegram.base_url,
            "database_url": db.url,
            "storage_url": f"file://{tmp_path / 'files'}",
            "http_host": "127.0.0.1",
            "http_port": free_port(),
            "recovery_interval_seconds": 3600,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
async def start_app() -> AsyncIterator[Callable[..., Any]]:
    """Starts Runtimes and stops every one of them after the test."""
    started: list[Runtime] = []

    async def start(settings: Settings, role: Role = Role.ALL) -> Runtime:
        runtime = Runtime(settings)
        await runtime.start(role)
        started.append(runtime)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


async def count(db: Database, model: Any, *where: Any) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
