"""The Messenger over aiogram's Bot: tolerates "not modified". Telegram's limits and 429s
(`retry_after`) are handled below it, by the Bot session's `OutgoingLimitMiddleware`."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import structlog
from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaAudio,
    InputMediaDocument,
    InputMediaLivePhoto,
    InputMediaPhoto,
    InputMediaVideo,
)

from aisha.billing.errors import ChargeAlreadyRefunded, RefundRefused
from aisha.bot.local_files import LocalBotApiFolder, UnsafeFilePath
from aisha.messaging import PUBLIC_API_DOWNLOAD_LIMIT, Buttons, FileTooLarge, RecipientUnreachable

T = TypeVar("T")
log = structlog.get_logger(__name__)


def keyboard(buttons: Buttons | None) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [InlineKeyboardButton(text=b.text, callback_data=b.callback_data) for b in row] for row in buttons
        ]
    )


class BotMessenger:
    def __init__(self, bot: Bot, *, local_files: LocalBotApiFolder | None = None) -> None:
        """`local_files`: a local Bot API server's folder, where its files are read (no HTTP)."""
        self._bot = bot
        self._local = local_files
        self.download_limit = local_files.max_bytes if local_files else PUBLIC_API_DOWNLOAD_LIMIT

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        # Rate limits and 429 retries live in the Bot session's middleware (aisha.bot.outgoing).
        return await request()

    async def send_text(
        self, chat_id: int, text: str, *, buttons: Buttons | None = None, reply_to: int | None = None
    ) -> int:
        try:
            message = await self._call(
                lambda: self._bot.send_message(
                    chat_id, text, reply_markup=keyboard(buttons), reply_to_message_id=reply_to
                )
            )
        except TelegramForbiddenError as error:  # blocked by the user, kicked, deactivated
            raise RecipientUnreachable(error.message) from error
        except TelegramBadRequest as error:
            if "chat not found" in error.message.lower():
                raise RecipientUnreachable(error.message) from error
            raise
        return message.message_id

    async def refund_star_payment(self, *, user_id: int, telegram_payment_charge_id: str) -> None:
        """billing's StarRefunds port: a 400 is Telegram's final word, anything else is no answer."""
        try:
            await self._call(
                lambda: self._bot.refund_star_payment(
                    user_id=user_id, telegram_payment_charge_id=telegram_payment_charge_id
                )
            )
        except TelegramBadRequest as error:
            if "CHARGE_ALREADY_REFUNDED" in error.message:
                raise ChargeAlreadyRefunded(error.message) from error
            raise RefundRefused(error.message) from error

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, buttons: Buttons | None = None
    ) -> None:
        try:
            await self._call(
                lambda: self._bot.edit_message_text(
                    text=text, chat_id=chat_id, message_id=message_id, reply_markup=keyboard(buttons)
                )
            )
        except TelegramBadRequest as error:
            if "not modified" not in error.message:
                raise

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        try:
            await self._call(
                lambda: self._bot.edit_message_reply_markup(chat_id=chat_id, message_id=message_id)
            )
        except TelegramBadRequest as error:
            if "not modified" not in error.message:
                raise

    async def send_document(
        self, chat_id: int, *, file_name: str, data: bytes, caption: str | None = None
    ) -> None:
        document = BufferedInputFile(data, filename=file_name)
        await self._call(lambda: self._bot.send_document(chat_id, document, caption=caption))

    async def send_chat_action(self, chat_id: int, action: str) -> None:
        await self._call(lambda: self._bot.send_chat_action(chat_id, action))

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, buttons: Buttons | None = None
    ) -> int:
        photo = BufferedInputFile(data, filename="image.png")
        message = await self._call(
            lambda: self._bot.send_photo(chat_id, photo, caption=caption, reply_markup=keyboard(buttons))
        )
        return message.message_id

    async def send_album(self, chat_id: int, photos: list[bytes], *, caption: str | None = None) -> list[int]:
        media: list[
            InputMediaAudio | InputMediaDocument | InputMediaLivePhoto | InputMediaPhoto | InputMediaVideo
        ]
        media = [
            InputMediaPhoto(
                media=BufferedInputFile(data, filename=f"image-{n}.png"), caption=caption if n == 1 else None
            )
            for n, data in enumerate(photos, start=1)
        ]
        messages = await self._call(lambda: self._bot.send_media_group(chat_id, media))
        return [m.message_id for m in messages]

    async def check_download(self, size: int | None) -> None:
        self._check_size(size or 0)
        if self._local is not None and size:
            # Where the job will copy it: the worker's temporary folder (see transcription).
            work_dir = Path(tempfile.gettempdir())
            await asyncio.to_thread(self._local.check_room, size, work_dir=work_dir)

    def _check_size(self, size: int, max_bytes: int | None = None) -> None:
        if size > self.download_limit:
            raise FileTooLarge(size, self.download_limit, public_api=self._local is None)
        if max_bytes is not None and size > max_bytes:
            raise FileTooLarge(size, max_bytes, public_api=False)

    async def download(self, file_id: str, destination: Path, *, max_bytes: int | None = None) -> int:
        try:
            file = await self._call(lambda: self._bot.get_file(file_id))
        except TelegramBadRequest as error:
            if "file is too big" in error.message:  # the public Bot API's 20 MB
                raise FileTooLarge(0, self.download_limit, public_api=self._local is None) from error
            raise
        self._check_size(file.file_size or 0, max_bytes)
        assert file.file_path is not None
        await asyncio.to_thread(destination.parent.mkdir, parents=True, exist_ok=True)
        if self._local is None:
            await self._bot.download_file(file.file_path, destination)
            return (await asyncio.to_thread(destination.stat)).st_size
        try:
            source = await asyncio.to_thread(self._local.resolve, file.file_path)
        except UnsafeFilePath as error:
            # The path holds the bot token: log it with the token masked.
            path = file.file_path.replace(self._bot.token, "<token>")
            log.error("telegram.local_file_refused", reason=str(error), path=path)
            raise
        await asyncio.to_thread(
            self._local.check_room, file.file_size or 0, work_dir=destination.parent, fetched=True
        )
        return await asyncio.to_thread(self._local.copy, source, destination)
