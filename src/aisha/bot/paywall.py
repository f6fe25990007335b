"""What every paid action shows: its price and the balance, or the shortfall and a top-up button."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message

from aisha.billing.errors import InsufficientCredits
from aisha.billing.prices import StarPackage
from aisha.i18n import Texts, Translator


class TopUp(CallbackData, prefix="topup"):
    """Opens the list of Stars packages."""


class Buy(CallbackData, prefix="buy"):
    package: str


def topup_button(t: Texts) -> InlineKeyboardButton:
    return _topup_button(t.translator, t.locale)


@lru_cache(maxsize=64)
def _topup_button(translator: Translator, locale: str) -> InlineKeyboardButton:
    # Built once per language: it goes under every /balance (aiogram's models are frozen).
    text = translator.get(locale, "billing.topup_button")
    return InlineKeyboardButton(text=text, callback_data=TopUp().pack())


def price_line(t: Texts, *, price: int, balance: int) -> str:
    return t("billing.price_line", price=price, balance=balance)


def insufficient_text(t: Texts, error: InsufficientCredits) -> str:
    return t(
        "billing.insufficient",
        required=error.required,
        balance=error.balance,
        shortfall=error.shortfall,
    )


def insufficient_keyboard(t: Texts) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[topup_button(t)]])


async def show_packages(message: Message, t: Texts, packages: Sequence[StarPackage]) -> None:
    """The invoice choice: one button per Stars package."""
    rows = [
        [
            InlineKeyboardButton(
                text=t("billing.package", stars=p.stars, credits=p.credits),
                callback_data=Buy(package=p.id).pack(),
            )
        ]
        for p in packages
    ]
    await message.answer(t("billing.choose_package"), reply_markup=InlineKeyboardMarkup(inline_keyboard=rows))
