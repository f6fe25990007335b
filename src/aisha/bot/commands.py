"""The command menu Telegram shows beside the input field, in every language we speak."""

from __future__ import annotations

import structlog
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand

from aisha.i18n import Translator

log = structlog.get_logger(__name__)

# What a user looks for most, first; admin commands stay out of the menu (/paysupport, which
# Telegram asks payment bots to have, opens the same conversation as /support).
MENU_COMMANDS = (
    "avatar",
    "generate",
    "gallery",
    "avatars",
    "transcripts",
    "balance",
    "topup",
    "prices",
    "settings",
    "support",
    "help",
    "cancel",
)


def menu(translator: Translator, locale: str) -> list[BotCommand]:
    return [
        BotCommand(command=name, description=translator.get(locale, f"commands.{name}"))
        for name in MENU_COMMANDS
    ]


async def publish_commands(bot: Bot, translator: Translator) -> None:
    """One menu per locale, and the default locale's for every other language. A failure only costs
    the menu, so it is logged and start-up goes on."""
    try:
        for locale in translator.locales:
            await bot.set_my_commands(menu(translator, locale), language_code=locale)
        await bot.set_my_commands(menu(translator, translator.default_locale))
    except TelegramAPIError as exc:
        log.warning("commands.publish_failed", error=str(exc))
