"""/start by polling and by webhook: the welcome in the user's language, registration exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from aisha.models import ProcessedUpdate, User
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.faults import Fault
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, count, eventually, sent_to


async def _welcome_to(telegram: FakeTelegramServer, user: FakeUser) -> str:
    return str((await sent_to(telegram, user.id)).params["text"])


async def test_start_by_polling_answers_in_the_users_language(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    await start_app(make_settings())
    ivan = FakeUser(id=1001, first_name="Иван", language_code="ru")
    alice = FakeUser(id=1002, first_name="Alice", language_code="en")
    telegram.queue_update(telegram.message_update(ivan, "/start"))
    telegram.queue_update(telegram.message_update(alice, "/start"))

    assert (await _welcome_to(telegram, ivan)).startswith("Привет, Иван!")
    assert (await _welcome_to(telegram, alice)).startswith("Hi, Alice!")
    await eventually(lambda: _users_are(db, 2))
    async with db.sessions() as session:
        stored = await session.get(User, 1001)
    assert stored is not None and stored.language == "ru" and stored.first_name == "Иван"


async def _users_are(db: Database, expected: int) -> bool:
    return await count(db, User) == expected


async def test_repeated_update_by_polling_registers_once_and_answers_once(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    await start_app(make_settings())
    user = FakeUser(id=2001, first_name="Bob", language_code="en")
    update = telegram.message_update(user, "/start")
    telegram.queue_update(update)
    telegram.queue_update(update)  # Telegram re-sent it
    await _welcome_to(telegram, user)
    await telegram.wait_until_handled(update)  # the duplicate too (the same id)
    assert len([c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == user.id]) == 1
    assert await count(db, User, User.telegram_id == user.id) == 1


async def test_webhook_mode_registers_the_webhook_and_handles_concurrent_duplicates(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    settings = make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    runtime = await start_app(settings)
    set_webhook = telegram.calls_of("setWebhook")[-1]
    assert set_webhook.params["url"] == "https://bot.example.com/telegram/webhook"
    assert set_webhook.params["secret_token"] == WEBHOOK_SECRET
    assert "message" in set_webhook.params["allowed_updates"]
    assert telegram.calls_of("getUpdates") == []

    url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
    user = FakeUser(id=3001, first_name="Ольга", language_code="ru")
    update = telegram.message_update(user, "/start")
    statuses = await asyncio.gather(
        *(telegram.post_webhook(url, update, secret=WEBHOOK_SECRET) for _ in range(5))
    )
    assert statuses == [200] * 5
    assert (await _welcome_to(telegram, user)).startswith("Привет, Ольга!")
    assert len([c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == user.id]) == 1
    assert await count(db, User, User.telegram_id == user.id) == 1


async def test_forged_or_missing_webhook_secret_is_refused_and_writes_nothing(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    settings = make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    runtime = await start_app(settings)
    url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
    user = FakeUser(id=4001, language_code="en")
    update = telegram.message_update(user, "/start")

    assert await telegram.post_webhook(url, update, secret="wrong-secret-0123456789") == 401
    assert await telegram.post_webhook(url, update, secret=None) == 401
    async with httpx.AsyncClient() as client:
        near_miss = await client.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET[:-1]}
        )
    assert near_miss.status_code == 401  # answered: the app is done with each of them
    assert await count(db, User) == 0
    assert await count(db, ProcessedUpdate) == 0
    assert telegram.calls_of("sendMessage") == []


async def test_healthz(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime = await start_app(make_settings())
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{runtime.http_port}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_start_up_publishes_the_command_menu_in_both_languages(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    await start_app(make_settings())

    def menu(language_code: str = "") -> dict[str, str]:
        return {c["command"]: c["description"] for c in telegram.my_commands(language_code=language_code)}

    assert menu("en")["avatar"] == "Create a personal avatar from your photos"
    assert menu("ru")["avatar"] == "Создать личный аватар по вашим фото"
    assert menu() == menu("ru")  # other languages get the default locale's
    assert list(menu("en"))[:3] == ["avatar", "generate", "gallery"]
    assert "admin" not in menu("en") and "grant" not in menu("en")


async def test_a_reply_that_fails_does_not_undo_what_the_update_did(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    """The update's work commits before the reply leaves: the user who blocked the bot at once is
    still registered, and the update is not handled a second time."""
    await start_app(make_settings())
    ivan = FakeUser(id=1003, first_name="Иван", language_code="ru")
    telegram.fail_nth("sendMessage", Fault.FORBIDDEN)
    update = telegram.message_update(ivan, "/start")
    telegram.queue_update(update)
    failed = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == ivan.id)
    assert failed.failed
    await eventually(lambda: _users_are(db, 1))
    assert await count(db, ProcessedUpdate, ProcessedUpdate.update_id == update["update_id"]) == 1

    telegram.queue_update(update)  # delivered again: dropped, no second welcome
    telegram.queue_update(telegram.message_update(ivan, "/balance"))
    answer = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == ivan.id)
    assert "Привет" not in answer.params["text"]
