"""/settings: the interface language and the language recordings are transcribed in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot.keyboards import language_keyboard, main_menu, menu_button
from aisha.i18n import Texts
from aisha.users.errors import UnknownLanguage
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services


async def show_settings(message: Message, user: User, t: Texts) -> None:
    keyboard = language_keyboard(t, language=t.locale, transcription=user.transcription_language)
    await message.answer(t("settings.text"), reply_markup=keyboard)


async def choose_transcription_language(
    query: CallbackQuery, session: AsyncSession, user: User, t: Texts, services: Services
) -> None:
    choice = (query.data or "").removeprefix("tlang:")
    previous = user.transcription_language
    try:
        language = await services.users.choose_transcription_language(
            session, telegram_id=user.telegram_id, choice=choice
        )
    except UnknownLanguage:
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    await query.answer(t("settings.transcription.changed", language=t(f"settings.transcription.{choice}")))
    if isinstance(query.message, Message) and language != previous:  # the mark moves to the new choice
        keyboard = language_keyboard(t, language=t.locale, transcription=language)
        await query.message.edit_reply_markup(reply_markup=keyboard)


async def choose_language(
    query: CallbackQuery, session: AsyncSession, user: User, t: Texts, services: Services
) -> None:
    language = (query.data or "").removeprefix("lang:")
    if language not in services.translator.locales:
        # Tampered callback data: say so and change nothing.
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    unchanged = language == t.locale
    await services.users.set_language(session, telegram_id=user.telegram_id, language=language)
    t = services.translator.bind(language)
    await query.answer(t("settings.language.changed"))
    if unchanged:
        return
    if isinstance(query.message, Message):  # the settings themselves now read in the new language
        keyboard = language_keyboard(t, language=language, transcription=user.transcription_language)
        await query.message.edit_text(t("settings.text"), reply_markup=keyboard)
        # A new message: only a sent one can bring the menu below in the new language.
        await query.message.answer(t("settings.language.changed"), reply_markup=main_menu(t))


def create_router(services: Services) -> Router:
    router = Router(name="settings")
    router.message.register(show_settings, menu_button(services.translator, "menu.settings"))
    router.message.register(show_settings, Command("settings"))
    router.callback_query.register(choose_transcription_language, F.data.startswith("tlang:"))
    router.callback_query.register(choose_language, F.data.startswith("lang:"))
    return router
