"""What support looks like: the card an operator reads about the person writing, its Reply
button and that button's callback data (which names a user: anyone can forge it, the router
checks who pressed it)."""

from __future__ import annotations

from aiogram import html
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from aisha.i18n import Texts
from aisha.support.service import SupportCard


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
