"""What one update costs the database on PostgreSQL, counted: a /start or a /balance of a returning
user is one transaction whose first statement claims the update id and reads the user's row and
the wizard state (bot/claim.py); /balance adds one read. A statement more is a regression."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from sqlalchemy import event

from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, sent_to

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(postgres_db: Database) -> Database:
    return postgres_db


@contextmanager
def database_calls(runtime: Runtime, update_id: int) -> Iterator[list[str]]:
    """The statements, BEGINs and COMMITs sent while handling the update `update_id` (the log
    context names the update being handled: other work of the runtime is not counted)."""
    calls: list[str] = []
    engine = runtime.services.engine.sync_engine

    def handling() -> bool:
        return structlog.contextvars.get_contextvars().get("update_id") == update_id

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if handling():
            calls.append(" ".join(statement.split())[:60])

    def on_begin(_conn: Any) -> None:
        if handling():
            calls.append("BEGIN")

    def on_commit(_conn: Any) -> None:
        if handling():
            calls.append("COMMIT")

    listeners = [("before_cursor_execute", on_statement), ("begin", on_begin), ("commit", on_commit)]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield calls
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


@pytest.fixture
async def runtime(make_settings: Callable[..., Any], start_app: Callable[..., Any]) -> Runtime:
    """The bot in webhook mode, as Telegram reaches it in production."""
    app: Runtime = await start_app(
        make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    )
    return app


async def _send(telegram: FakeTelegramServer, runtime: Runtime, update: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
    assert await telegram.post_webhook(url, update, secret=WEBHOOK_SECRET) == 200  # handled by then


async def test_start_and_balance_of_a_returning_user_are_one_transaction_of_few_statements(
    telegram: FakeTelegramServer, runtime: Runtime
) -> None:
    user = FakeUser(id=7001, first_name="Vera", language_code="en")
    await _send(telegram, runtime, telegram.message_update(user, "/start"))  # registered
    await sent_to(telegram, user.id)

    start = telegram.message_update(user, "/start")
    with database_calls(runtime, start["update_id"]) as calls:
        await _send(telegram, runtime, start)
    assert len(calls) == 3, calls
    assert calls[0] == "BEGIN" and calls[1].startswith("WITH claimed AS (INSERT INTO processed_updates")
    assert calls[2] == "COMMIT"

    balance = telegram.message_update(user, "/balance")
    with database_calls(runtime, balance["update_id"]) as calls:
        await _send(telegram, runtime, balance)
    assert len(calls) == 4, calls
    assert calls[0] == "BEGIN" and calls[1].startswith("WITH claimed AS (INSERT INTO processed_updates")
    assert calls[3] == "COMMIT"
    # Still the welcome and the balance, each answered once.
    answers = [
        c.params["text"] for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == user.id
    ]
    assert len(answers) == 3 and answers[1] == answers[0] and "balance" in answers[2].lower()


async def test_a_repeated_update_costs_its_claim_only(telegram: FakeTelegramServer, runtime: Runtime) -> None:
    user = FakeUser(id=7002, first_name="Oleg", language_code="en")
    update = telegram.message_update(user, "/balance")
    await _send(telegram, runtime, update)
    with database_calls(runtime, update["update_id"]) as calls:
        await _send(telegram, runtime, update)  # Telegram sent it again
    assert [c.split(" ")[0] for c in calls] == ["BEGIN", "WITH", "COMMIT"], calls
    assert len([c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == user.id]) == 1
