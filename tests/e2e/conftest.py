"""The whole app, wired as `aisha run` wires it, against the fake Telegram Bot API over HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from taskiq import InMemoryBroker

from aisha.config import Settings, load_settings
from aisha.runtime import Role, Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.telegram import RefusedCall
from aisha.sandbox.telegram.calls import WAIT_LIMIT  # the fake's own waits use the same bound
from tests.conftest import Database

WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_refusals(telegram: FakeTelegramServer) -> None:
    """Fail when the bot made a call that Telegram would have refused and the test didn't say it
    expects one (``telegram.expect_refusal``; fault injection counts as expected)."""
    refused = telegram.unexpected_refusals()
    if refused:
        lines = "\n".join(f"  {RefusedCall(call)}" for call in refused)
        pytest.fail(f"{len(refused)} Bot API call(s) refused as Telegram would refuse them:\n{lines}")


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server
    check_refusals(server)


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
            # Per-chat spacing (1 s) would slow every conversation down; the outgoing-limit tests
            # turn it back on. The overall 30/s limit stays.
            "telegram_private_chat_per_second": 0,
            "telegram_group_chat_per_minute": 0,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


def report_handled(runtime: Runtime, telegram: FakeTelegramServer) -> None:
    """Tell the fake when the runtime's dispatcher has finished each update (by polling or a
    webhook), for ``telegram.wait_until_handled``."""
    dispatcher = runtime.dispatcher
    feed_update = dispatcher.feed_update

    async def feed_and_report(bot: Any, update: Any, **kwargs: Any) -> Any:
        try:
            return await feed_update(bot, update, **kwargs)
        finally:
            telegram.mark_handled(update.update_id)

    dispatcher.feed_update = feed_and_report  # type: ignore[method-assign]


@pytest.fixture
async def start_app(telegram: FakeTelegramServer) -> AsyncIterator[Callable[..., Any]]:
    """Starts Runtimes and stops every one of them after the test."""
    started: list[Runtime] = []

    async def start(settings: Settings, role: Role = Role.ALL, *, serve_only: bool = False) -> Runtime:
        runtime = Runtime(settings)
        report_handled(runtime, telegram)
        if serve_only:  # only the HTTP app: for dependencies that are down on purpose
            await runtime.start_http()
        else:
            await runtime.start(role)
        started.append(runtime)
        if role in (Role.ALL, Role.WORKER) and not serve_only:
            # The recovery sweep runs once at start (then hourly here): let that run end, so a row a
            # test makes stale is swept by the test's own call, not by a race with the first sweep.
            async def first_sweep_done() -> bool:
                return runtime.services.recovery.runs >= 1

            await eventually(first_sweep_done)
        return runtime

    yield start
    for runtime in started:
        await runtime.stop()


def buttons(call: Any) -> list[tuple[str, str]]:
    """The inline buttons of a sent message, as (text, callback data)."""
    markup = call.params.get("reply_markup") or {}
    return [(b["text"], b.get("callback_data", "")) for row in markup.get("inline_keyboard", []) for b in row]


async def say(telegram: FakeTelegramServer, user: FakeUser, text: str) -> Any:
    """The user writes `text` (delivered by polling); returns the bot's next message to them
    (raising RefusedCall at once if Telegram would have refused it)."""
    telegram.queue_update(telegram.message_update(user, text))
    return await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == user.id)


def press(telegram: FakeTelegramServer, user: FakeUser, data: str, under: Any) -> dict[str, Any]:
    """The user presses a button with `data` under the bot's message `under` (by polling);
    returns the update, for ``telegram.wait_until_handled``."""
    message = next(
        m
        for m in reversed(telegram.chat_messages(user.id))
        if m.get("message_id") == under.result["message_id"]
    )
    update = telegram.callback_update(user, data, message=message)
    telegram.queue_update(update)
    return update


async def sent_to(
    telegram: FakeTelegramServer, chat_id: int, method: str = "sendMessage", *, timeout: float = WAIT_LIMIT
) -> Any:
    """The first `method` call to `chat_id`, waiting for it; unlike wait_for_call it skips nothing,
    so calls to several chats can be awaited in any order. A refused call raises RefusedCall."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        looked_at = asyncio.get_running_loop().time()
        for call in telegram.calls_of(method):
            if call.params.get("chat_id") == chat_id and call.answered:
                if call.failed and not call.expected:
                    raise RefusedCall(call)
                return call
        if looked_at > deadline:
            raise TimeoutError(f"no {method} to chat {chat_id} within {timeout}s")
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = WAIT_LIMIT) -> None:
    """Handlers answer before their transaction commits: wait for the effect to be visible.

    Fails only when a check that began after the deadline still doesn't see it: a check that
    began in time and was answered late (the event loop stalled meanwhile) proves nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        began = loop.time()
        if await check():
            return
        if began > deadline:
            raise AssertionError("the expected state was not reached in time")
        await asyncio.sleep(0.02)


async def jobs_done(runtime: Runtime, *, timeout: float = WAIT_LIMIT) -> None:
    """Wait until every background job the runtime's in-process queue is running has ended."""
    broker = runtime.services.queue.broker
    assert isinstance(broker, InMemoryBroker), "only an in-process queue can be waited for"
    async with asyncio.timeout(timeout):
        while broker._running_tasks:  # a job may start another
            await broker.wait_all()
            # A finished task leaves the set only in a done-callback; awaiting a finished task
            # never yields, so without this the loop could spin forever and starve that callback.
            await asyncio.sleep(0)


async def count(db: Database, model: Any, *where: Any) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
