"""Keyboards shared by several features."""

from __future__ import annotations

from aiogram import F
from aiogram.types import (
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
)
from magic_filter import MagicFilter

from aisha.i18n import Texts, Translator

# Text keys of the main menu's buttons, row by row; features add theirs as they arrive.
MAIN_MENU: list[list[str]] = [
    ["menu.generate", "menu.gallery"],
    ["menu.avatars", "menu.transcripts"],
    ["menu.balance"],
    ["menu.settings", "menu.help"],
]


def main_menu(t: Texts) -> ReplyKeyboardMarkup:
    rows = [[KeyboardButton(text=t(key)) for key in row] for row in MAIN_MENU]
    return ReplyKeyboardMarkup(keyboard=rows, resize_keyboard=True, is_persistent=True)


def menu_button(translator: Translator, key: str) -> MagicFilter:
    """Matches the menu button's text in any of our languages."""
    return F.text.in_({translator.get(locale, key) for locale in translator.locales})


def language_keyboard(t: Texts) -> InlineKeyboardMarkup:
    """The interface language, then the language recordings are transcribed in."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text=t("settings.language.ru"), callback_data="lang:ru"),
                InlineKeyboardButton(text=t("settings.language.en"), callback_data="lang:en"),
            ],
            [
                InlineKeyboardButton(text=t(f"settings.transcription.{code}"), callback_data=f"tlang:{code}")
                for code in ("auto", "ru", "en")
            ],
        ]
    )
