"""/settings switches the language; /cancel leaves a wizard; /help lists the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiogram.fsm.storage.base import StorageKey

from aisha.models import User
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from tests.conftest import Database
from tests.e2e.conftest import buttons, eventually, say


async def test_language_switch_changes_every_following_answer(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    await start_app(make_settings())
    user = FakeUser(id=6001, first_name="Kate", language_code="en")
    settings_message = await say(telegram, user, "/settings")
    assert settings_message.params["text"].startswith("<b>Settings</b>")
    # The current choices are marked.
    assert buttons(settings_message) == [
        ("🇷🇺 Русский", "lang:ru"),
        ("✓ 🇬🇧 English", "lang:en"),
        ("✓ 🎙 Auto", "tlang:auto"),
        ("🎙 Russian", "tlang:ru"),
        ("🎙 English", "tlang:en"),
    ]

    message = telegram.chat_messages(user.id)[-1]
    telegram.queue_update(telegram.callback_update(user, "lang:ru", message=message))
    changed = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == user.id)
    assert changed.params["text"] == "Язык переключён на русский."
    # The settings message itself now reads in Russian, the mark on the new language.
    edited = telegram.calls_of("editMessageText")[-1]
    assert edited.params["message_id"] == message["message_id"]
    assert edited.params["text"].startswith("<b>Настройки</b>\nЯзык интерфейса")
    assert buttons(edited) == [
        ("✓ 🇷🇺 Русский", "lang:ru"),
        ("🇬🇧 English", "lang:en"),
        ("✓ 🎙 Авто", "tlang:auto"),
        ("🎙 Русский", "tlang:ru"),
        ("🎙 Английский", "tlang:en"),
    ]
    keyboard = telegram.reply_keyboard(user.id)
    assert keyboard is not None
    labels = [button["text"] for row in keyboard["keyboard"] for button in row]
    assert "💰 Баланс" in labels and "⚙️ Настройки" in labels
    assert (await say(telegram, user, "/help")).params["text"].startswith("<b>Что я умею</b>")
    await eventually(lambda: _language_is(db, user.id, "ru"))

    # A forged language code changes nothing.
    telegram.queue_update(telegram.callback_update(user, "lang:de", message=message))
    alert = await telegram.wait_for_call("answerCallbackQuery", lambda c: c.params.get("show_alert"))
    assert alert.params["text"] == "Эта кнопка больше не действует."
    async with db.sessions() as session:
        stored = await session.get(User, user.id)
    assert stored is not None and stored.language == "ru"


async def _language_is(db: Database, user_id: int, language: str) -> bool:
    async with db.sessions() as session:
        stored = await session.get(User, user_id)
    return stored is not None and stored.language == language


async def test_transcription_language_is_chosen_in_settings(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    await start_app(make_settings())
    user = FakeUser(id=6004, language_code="en")
    await say(telegram, user, "/settings")
    message = telegram.chat_messages(user.id)[-1]
    telegram.queue_update(telegram.callback_update(user, "tlang:ru", message=message))
    answer = await telegram.wait_for_call("answerCallbackQuery")
    assert answer.params["text"] == "Recordings will be transcribed as: 🎙 Russian"
    marked = await telegram.wait_for_call("editMessageReplyMarkup")
    assert [label for label, _ in buttons(marked)][2:] == ["🎙 Auto", "✓ 🎙 Russian", "🎙 English"]
    await eventually(lambda: _transcription_language_is(db, user.id, "ru"))
    telegram.queue_update(telegram.callback_update(user, "tlang:auto", message=message))
    await telegram.wait_for_call("answerCallbackQuery")
    await eventually(lambda: _transcription_language_is(db, user.id, None))


async def _transcription_language_is(db: Database, user_id: int, language: str | None) -> bool:
    async with db.sessions() as session:
        stored = await session.get(User, user_id, populate_existing=True)
    return stored is not None and stored.transcription_language == language


async def test_cancel_leaves_any_wizard(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime: Runtime = await start_app(make_settings())
    user = FakeUser(id=6002, language_code="en")
    assert (await say(telegram, user, "/cancel")).params["text"] == "There is nothing to cancel."

    key = StorageKey(bot_id=telegram.bot_id, chat_id=user.id, user_id=user.id)
    await runtime.dispatcher.storage.set_state(key, "SomeWizard:step")
    assert (await say(telegram, user, "/cancel")).params["text"] == "Cancelled."
    await eventually(lambda: _state_is_none(runtime, key))


async def _state_is_none(runtime: Runtime, key: StorageKey) -> bool:
    return await runtime.dispatcher.storage.get_state(key) is None


async def test_unknown_command_points_to_the_menu(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    await start_app(make_settings())
    reply = await say(telegram, FakeUser(id=6003, language_code="en"), "/whatisthis")
    assert reply.params["text"] == "I didn't understand that. Choose an action from the menu below."
