"""What the user sees of /delete_me: the question with its buttons, and their callback data."""

from __future__ import annotations

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message

from aisha.i18n import Texts

CANCEL = "privacy:cancel"
CONFIRM = "privacy:confirm:"


def confirm_data(*, user_id: int) -> str:
    """Callback data of the confirm button: names the user, so nobody else's press counts."""
    return f"{CONFIRM}{user_id}"


def confirmed_by(*, data: str, user_id: int) -> bool:
    return data == confirm_data(user_id=user_id)


def ask_keyboard(t: Texts, *, user_id: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("privacy.confirm_button"), callback_data=confirm_data(user_id=user_id)
                ),
                InlineKeyboardButton(text=t("privacy.cancel_button"), callback_data=CANCEL),
            ]
        ]
    )


def already_shows(message: Message, text: str) -> bool:
    """The message already reads ``text``, with no buttons: Telegram refuses an edit that changes
    nothing ("message is not modified"), so a later press of a button it had need not make one."""
    return message.html_text == text and message.reply_markup is None
