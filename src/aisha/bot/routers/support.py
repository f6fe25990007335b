"""/support and /paysupport: a person writes, every operator gets it, an operator answers.

The user's side is a state (Support.asking): each message they send is copied to every operator
(copyMessage keeps a photo, a voice or a document as it was sent) under their card with a Reply
button. This router sits above generation and transcription, so in that state a text is never a
prompt and a voice never a paid transcription. The operator's side is a state too
(Support.answering, the user's id in its data): each message goes to that user under a "Support:"
line in the user's language. /cancel leaves either. Reply's callback data names a user and anyone
can forge it: the handler checks who pressed it.

Nothing is stored: the conversation lives in the two Telegram chats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from aiogram import Bot, F, Router, html
from aiogram.enums import ContentType
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot.keyboards import MAIN_MENU, main_menu
from aisha.bot.presenters import support as present
from aisha.bot.presenters.support import SupportReply
from aisha.i18n import Texts
from aisha.support.service import SupportCard
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

log = structlog.get_logger(__name__)

# What copyMessage carries as it was sent. Anything else (a payment, a service message) goes on to
# its own handler, also in the middle of a support conversation.
COPYABLE = frozenset(
    {
        ContentType.TEXT,
        ContentType.PHOTO,
        ContentType.DOCUMENT,
        ContentType.VOICE,
        ContentType.AUDIO,
        ContentType.VIDEO,
        ContentType.VIDEO_NOTE,
        ContentType.ANIMATION,
        ContentType.STICKER,
        ContentType.LOCATION,
        ContentType.CONTACT,
    }
)


class Support(StatesGroup):
    asking = State()  # a user writing to support
    answering = State()  # an operator answering data["user_id"]


# --- the user's side ------------------------------------------------------------------------------


async def open_support(message: Message, t: Texts, state: FSMContext, services: Services) -> None:
    if not services.support.available:
        await message.answer(t("support.unavailable"))
        return
    await state.set_state(Support.asking)
    await state.set_data({})
    await message.answer(t("support.ask"))


async def user_writes(
    message: Message,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
    bot: Bot,
    services: Services,
) -> None:
    support = services.support
    card = await support.card(session=session, user_id=user.telegram_id)
    if card is None:  # deleted meanwhile; the middleware registers a user before this runs
        return
    operators = await support.operators(session=session)
    # The full card with the first message; a short pointer with the ones after it.
    first = not (await state.get_data()).get("delivered")
    delivered = await present.pass_on(bot, services.translator, operators, card, message, first=first)
    log.info("support.message_passed_on", user_id=user.telegram_id, operators=delivered)
    if not delivered:
        await message.answer(t("support.not_delivered"))
        return
    await state.update_data(delivered=True)
    await message.answer(t("support.passed_on" if first else "support.passed_on_more"))


async def user_leaves(message: Message, t: Texts, state: FSMContext) -> None:
    await state.clear()
    await message.answer(t("support.closed"), reply_markup=main_menu(t))


# --- the operator's side --------------------------------------------------------------------------


async def reply_pressed(
    query: CallbackQuery,
    callback_data: SupportReply,
    session: AsyncSession,
    t: Texts,
    state: FSMContext,
    bot: Bot,
    services: Services,
) -> None:
    support = services.support
    if not support.is_operator(user_id=query.from_user.id):
        log.warning("support.forbidden_reply", user_id=query.from_user.id)
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    card = await support.card(session=session, user_id=callback_data.user_id)
    if card is None:
        await query.answer(t("support.no_such_user"), show_alert=True)
        return
    await state.set_state(Support.answering)
    await state.set_data({"user_id": card.telegram_id})
    await query.answer()
    await bot.send_message(query.from_user.id, t("support.write_answer", user=present.user_label(card)))


async def answering_card(session: AsyncSession, state: FSMContext, services: Services) -> SupportCard | None:
    """The user being answered; None (and reply mode ended) when the data is broken or the user
    was deleted meanwhile."""
    user_id = (await state.get_data()).get("user_id")
    card = None
    if isinstance(user_id, int):
        card = await services.support.card(session=session, user_id=user_id)
    if card is None:
        await state.clear()
    return card


async def operator_writes(
    message: Message,
    session: AsyncSession,
    t: Texts,
    state: FSMContext,
    bot: Bot,
    services: Services,
) -> None:
    card = await answering_card(session, state, services)
    if card is None:
        await message.answer(t("support.no_such_user"))
        return
    try:
        await present.answer_user(bot, services.translator, card, message)
    except TelegramForbiddenError:
        await state.clear()
        await message.answer(t("support.answer_blocked", user=present.user_label(card)))
        return
    except TelegramAPIError as error:
        await message.answer(
            t("support.answer_failed", user=present.user_label(card), error=html.quote(error.message))
        )
        return
    log.info("support.answered", user_id=card.telegram_id, operator_id=message.chat.id)
    await message.answer(t("support.answer_delivered", user=present.user_label(card)))


async def operator_leaves(message: Message, t: Texts, state: FSMContext) -> None:
    await state.clear()
    await message.answer(t("support.answer_closed"))


def create_router(services: Services) -> Router:
    """Above every feature that takes free text, photos or voice; below admin's commands."""
    router = Router(name="support")
    translator = services.translator
    menu_texts = {
        translator.get(locale, key) for locale in translator.locales for row in MAIN_MENU for key in row
    }
    operator = F.from_user.id.in_(services.settings.admin_ids)
    # Commands and the menu's buttons pass through: /balance works mid-conversation, /cancel ends it.
    written = (F.content_type.in_(COPYABLE), ~F.text.startswith("/"), ~F.text.in_(menu_texts))

    router.message.register(open_support, Command("support", "paysupport"))
    router.message.register(user_leaves, Command("cancel"), StateFilter(Support.asking))
    router.message.register(user_writes, StateFilter(Support.asking), F.chat.type == "private", *written)
    router.callback_query.register(reply_pressed, SupportReply.filter())
    router.message.register(operator_leaves, Command("cancel"), StateFilter(Support.answering))
    router.message.register(operator_writes, StateFilter(Support.answering), operator, *written)
    return router
