"""/settings: the interface language."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot.keyboards import language_keyboard, main_menu, menu_button
from aisha.i18n import Texts
from aisha.users.models import User

TRANSCRIPTION_LANGUAGES = ("auto", "ru", "en")

if TYPE_CHECKING:
    from aisha.container import Services


def create_router(services: Services) -> Router:
    router = Router(name="settings")

    @router.message(Command("settings"))
    @router.message(menu_button(services.translator, "menu.settings"))
    async def show_settings(message: Message, t: Texts) -> None:
        await message.answer(t("settings.text"), reply_markup=language_keyboard(t))

    @router.callback_query(F.data.startswith("tlang:"))
    async def choose_transcription_language(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts
    ) -> None:
        choice = (query.data or "").removeprefix("tlang:")
        if choice not in TRANSCRIPTION_LANGUAGES:
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        language = None if choice == "auto" else choice
        await services.users.set_transcription_language(
            session, telegram_id=user.telegram_id, language=language
        )
        await query.answer(
            t("settings.transcription.changed", language=t(f"settings.transcription.{choice}"))
        )

    @router.callback_query(F.data.startswith("lang:"))
    async def choose_language(query: CallbackQuery, session: AsyncSession, user: User, t: Texts) -> None:
        language = (query.data or "").removeprefix("lang:")
        if language not in services.translator.locales:
            # Tampered callback data: say so and change nothing.
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        await services.users.set_language(session, telegram_id=user.telegram_id, language=language)
        t = services.translator.bind(language)
        await query.answer(t("settings.language.changed"))
        if query.message is not None:
            await query.message.answer(t("settings.language.changed"), reply_markup=main_menu(t))

    return router
