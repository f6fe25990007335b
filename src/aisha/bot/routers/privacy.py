"""/delete_me: erase the user's data after they confirm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot import resume
from aisha.bot.presenters import privacy as present
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services


async def ask(message: Message, session: AsyncSession, user: User, t: Texts, services: Services) -> None:
    balance = await services.ledger.get_balance(session=session, user_id=user.telegram_id)
    await message.answer(
        t("privacy.ask", balance=balance), reply_markup=present.ask_keyboard(t, user_id=user.telegram_id)
    )


async def cancel(query: CallbackQuery, t: Texts) -> None:
    await query.answer()
    if isinstance(query.message, Message) and not present.already_shows(
        query.message, t("privacy.cancelled")
    ):
        await query.message.edit_text(t("privacy.cancelled"))


async def confirm(
    query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext, services: Services
) -> None:
    if not present.confirmed_by(data=query.data or "", user_id=user.telegram_id):
        # Somebody else's button (forwarded or forged): nothing happens.
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    # Not a paid operation, but it erases: one at a time per user, like the paid ones start.
    if not await services.locks.hold_for(session, user_id=user.telegram_id):
        await query.answer(t("limits.busy"), show_alert=True)
        return
    await state.clear()
    await resume.forget(state)  # a remembered prompt is the user's data too
    await services.privacy.delete_user_data(session=session, user_id=user.telegram_id)
    await query.answer()
    if isinstance(query.message, Message):
        if not present.already_shows(query.message, t("privacy.done")):
            # Through the messenger: two quick presses both find the old text, and the second
            # edit then changes nothing ("not modified"), which the messenger lets pass.
            await services.messenger.edit_text(
                query.message.chat.id, query.message.message_id, t("privacy.done")
            )
    else:
        await services.messenger.send_text(user.telegram_id, t("privacy.done"))


def create_router(services: Services) -> Router:
    router = Router(name="privacy")
    router.message.register(ask, Command("delete_me"))
    router.callback_query.register(cancel, F.data == present.CANCEL)
    router.callback_query.register(confirm, F.data.startswith(present.CONFIRM))
    return router
