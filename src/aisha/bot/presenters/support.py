"""What support looks like: the card an operator reads about the person writing, its Reply
button and that button's callback data (which names a user: anyone can forge it, the router
checks who pressed it); a user's message as every operator gets it, and an operator's answer as
the user gets it."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiogram import Bot, html
from aiogram.exceptions import TelegramAPIError
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters

from aisha.i18n import Texts, Translator
from aisha.support.service import Operator, SupportCard

log = structlog.get_logger(__name__)
TEXT_LIMIT = 4096


class SupportReply(CallbackData, prefix="supr"):
    user_id: int


def user_label(card: SupportCard) -> str:
    name = " ".join(part for part in (card.first_name, card.last_name) if part)
    ident = f"<code>{card.telegram_id}</code>"
    return f"{html.quote(name)} ({ident})" if name else ident


def card_text(t: Texts, card: SupportCard) -> str:
    when = t("support.date_format")
    payments = [
        t(
            "support.payment_line",
            when=p.created_at.strftime(when),
            stars=p.stars,
            credits=p.credits,
            status=t(f"support.payment_status.{p.status.value}"),
            charge_id=html.quote(p.charge_id),
        )
        for p in card.payments
    ]
    holds = [
        t(
            "support.hold_line",
            amount=h.amount,
            reference=html.quote(h.reference),
            when=h.created_at.strftime(when),
        )
        for h in card.holds
    ]
    return t(
        "support.card",
        user=user_label(card),
        username=f"@{html.quote(card.username)}" if card.username else t("support.none"),
        language=card.language,
        balance=card.balance,
        held=card.held,
        payments="\n".join(payments) or t("support.none"),
        holds="\n".join(holds) or t("support.none"),
    )


def reply_keyboard(t: Texts, user_id: int) -> InlineKeyboardMarkup:
    button = InlineKeyboardButton(
        text=t("support.button.reply"), callback_data=SupportReply(user_id=user_id).pack()
    )
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


async def pass_on(
    bot: Bot,
    translator: Translator,
    operators: Sequence[Operator],
    card: SupportCard,
    message: Message,
    *,
    first: bool,
) -> int:
    """Copy the user's message to every operator (copyMessage keeps a photo, a voice or a document
    as it was sent) with the card under it (the full card with the first message, a short pointer
    with the ones after it), each in the operator's language; how many operators got it."""
    delivered = 0
    for operator in operators:
        ot = translator.bind(operator.language or translator.default_locale)
        header = card_text(ot, card) if first else ot("support.more", user=user_label(card))
        try:
            copied = await bot.copy_message(operator.telegram_id, message.chat.id, message.message_id)
            await bot.send_message(
                operator.telegram_id,
                header,
                reply_markup=reply_keyboard(ot, card.telegram_id),
                reply_parameters=ReplyParameters(message_id=copied.message_id),
            )
        except TelegramAPIError as error:  # this operator blocked the bot or never started it
            log.warning("support.operator_unreachable", operator_id=operator.telegram_id, error=error.message)
            continue
        delivered += 1
    return delivered


async def answer_user(bot: Bot, translator: Translator, card: SupportCard, message: Message) -> None:
    """The operator's message to the user under a "Support:" line in the user's own language, not
    the operator's. Raises aiogram's TelegramAPIError (TelegramForbiddenError: the user blocked
    the bot)."""
    header = translator.get(card.language, "support.answer_header")
    text = f"{header}\n{message.html_text}" if message.text is not None else ""
    if text and len(text.encode("utf-16-le")) // 2 <= TEXT_LIMIT:  # Telegram counts UTF-16
        await bot.send_message(card.telegram_id, text)
    else:  # media, or a text too long to carry the line: the line, then the message as it is
        await bot.send_message(card.telegram_id, header)
        await bot.copy_message(card.telegram_id, message.chat.id, message.message_id)
