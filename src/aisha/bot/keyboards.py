"""Keyboards shared by several features."""

from __future__ import annotations

from functools import lru_cache

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
    return _main_menu(t.translator, t.locale)


@lru_cache(maxsize=64)
def _main_menu(translator: Translator, locale: str) -> ReplyKeyboardMarkup:
    # Built once per language: it goes with many answers, and aiogram's models are frozen.
    rows = [[KeyboardButton(text=translator.get(locale, key)) for key in row] for row in MAIN_MENU]
    return ReplyKeyboardMarkup(keyboard=rows, resize_keyboard=True, is_persistent=True)


def menu_button(translator: Translator, key: str) -> MagicFilter:
    """Matches the menu button's text in any of our languages."""
    return F.text.in_({translator.get(locale, key) for locale in translator.locales})


def language_keyboard(t: Texts, *, language: str, transcription: str | None) -> InlineKeyboardMarkup:
    """The interface language, then the language recordings are transcribed in (None: auto); the
    current choice of each is marked."""

    def choice(key: str, data: str, current: bool) -> InlineKeyboardButton:
        text = t("settings.current", label=t(key)) if current else t(key)
        return InlineKeyboardButton(text=text, callback_data=data)

    return InlineKeyboardMarkup(
        inline_keyboard=[
            [choice(f"settings.language.{code}", f"lang:{code}", code == language) for code in ("ru", "en")],
            [
                choice(f"settings.transcription.{code}", f"tlang:{code}", code == (transcription or "auto"))
                for code in ("auto", "ru", "en")
            ],
        ]
    )
