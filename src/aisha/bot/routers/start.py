"""/start, /help, /cancel and the fallback for messages nobody else took."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router, html
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from aisha.bot.keyboards import main_menu, menu_button
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services


async def start(message: Message, user: User, t: Texts, state: FSMContext) -> None:
    await state.clear()
    name = html.quote(user.first_name or user.username or "")
    await message.answer(
        t("start.welcome", name=name, name_sep=", " if name else ""), reply_markup=main_menu(t)
    )


async def help_(message: Message, t: Texts) -> None:
    await message.answer(t("help.text"), reply_markup=main_menu(t))


async def cancel(message: Message, t: Texts, state: FSMContext) -> None:
    if await state.get_state() is None:
        await message.answer(t("cancel.nothing"), reply_markup=main_menu(t))
        return
    await state.clear()
    await message.answer(t("cancel.done"), reply_markup=main_menu(t))


async def unknown(message: Message, t: Texts) -> None:
    await message.answer(t("fallback.unknown"), reply_markup=main_menu(t))


async def unknown_button(query: CallbackQuery, t: Texts) -> None:
    # Stale or tampered callback data that no feature could parse.
    await query.answer(t("errors.bad_button"), show_alert=True)


def create_router(services: Services) -> Router:
    router = Router(name="start")
    router.message.register(start, CommandStart())
    router.message.register(help_, menu_button(services.translator, "menu.help"))
    router.message.register(help_, Command("help"))
    router.message.register(cancel, Command("cancel"))
    return router


def create_fallback_router() -> Router:
    """Included last: whatever no feature understood gets a pointer to the menu."""
    router = Router(name="fallback")
    router.message.register(unknown, F.chat.type == "private")
    router.callback_query.register(unknown_button)
    return router
