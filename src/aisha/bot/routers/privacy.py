"""/delete_me: erase the user's data after they confirm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot import resume
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

CANCEL = "privacy:cancel"


def _already_shows(message: Message, text: str) -> bool:
    """The message already reads ``text``, with no buttons: Telegram refuses an edit that changes
    nothing ("message is not modified"), so a later press of a button it had need not make one."""
    return message.html_text == text and message.reply_markup is None


def create_router(services: Services) -> Router:
    router = Router(name="privacy")
    privacy = services.privacy

    @router.message(Command("delete_me"))
    async def ask(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        balance = await services.ledger.get_balance(session=session, user_id=user.telegram_id)
        keyboard = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text=t("privacy.confirm_button"),
                        callback_data=privacy.confirm_data(user_id=user.telegram_id),
                    ),
                    InlineKeyboardButton(text=t("privacy.cancel_button"), callback_data=CANCEL),
                ]
            ]
        )
        await message.answer(t("privacy.ask", balance=balance), reply_markup=keyboard)

    @router.callback_query(F.data == CANCEL)
    async def cancel(query: CallbackQuery, t: Texts) -> None:
        await query.answer()
        if isinstance(query.message, Message) and not _already_shows(query.message, t("privacy.cancelled")):
            await query.message.edit_text(t("privacy.cancelled"))

    @router.callback_query(F.data.startswith("privacy:confirm:"))
    async def confirm(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        if not privacy.confirmed_by(data=query.data or "", user_id=user.telegram_id):
            # Somebody else's button (forwarded or forged): nothing happens.
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        if not await services.locks.hold_for(session, user_id=user.telegram_id):
            await query.answer(t("limits.busy"), show_alert=True)
            return
        await state.clear()
        await resume.forget(state)  # a remembered prompt is the user's data too
        await privacy.delete_user_data(session=session, user_id=user.telegram_id)
        await query.answer()
        if isinstance(query.message, Message):
            if not _already_shows(query.message, t("privacy.done")):
                # Through the messenger: two quick presses both find the old text, and the second
                # edit then changes nothing ("not modified"), which the messenger lets pass.
                await services.messenger.edit_text(
                    query.message.chat.id, query.message.message_id, t("privacy.done")
                )
        else:
            await services.messenger.send_text(user.telegram_id, t("privacy.done"))

    return router
