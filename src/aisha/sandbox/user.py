"""The sandbox's one simulated person: what they do on the page becomes Telegram updates."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aisha.sandbox.errors import SandboxError
from aisha.sandbox.telegram import FakeTelegramServer, FakeUser
from aisha.sandbox.uploads import KINDS, Upload, as_media, as_photo

JsonDict = dict[str, Any]
Deliver = Callable[[JsonDict], Awaitable[None]]

ANSWER_TIMEOUT = 10.0  # how long a button press or a payment waits for the bot's answer
_ALBUM_SIZE = 10  # Telegram puts at most 10 items in one album
_TEXT_LIMIT = 4096
_CAPTION_LIMIT = 1024


class SandboxUser:
    """Sends messages, files, button presses and payments to the bot as one Telegram user would."""

    def __init__(
        self, telegram: FakeTelegramServer, profile: FakeUser, *, deliver: Deliver, scratch_dir: Path
    ) -> None:
        self.telegram = telegram
        self.profile = profile  # who they are to Telegram
        self._deliver = deliver
        self._scratch_dir = scratch_dir

    async def say(self, text: str) -> int:
        """Send a text message (a reply-keyboard button sends its label the same way)."""
        if not text.strip():
            raise SandboxError(400, "sandbox.error_text_empty")
        if len(text) > _TEXT_LIMIT:
            raise SandboxError(400, "sandbox.error_text_long")
        update = self.telegram.message_update(self.profile, text)
        await self._deliver(update)
        return int(update["message"]["message_id"])

    async def send_files(self, kind: str, uploads: list[Upload], caption: str | None) -> list[int]:
        """Send files as ``kind``; several photos or documents go as albums, as Telegram sends them.

        Everything is checked before the first update is made, so refused input changes nothing.
        """
        if kind not in KINDS:
            raise SandboxError(400, "sandbox.error_unknown_kind", kind=kind)
        if not uploads:
            raise SandboxError(400, "sandbox.error_no_file")
        if caption is not None and len(caption) > _CAPTION_LIMIT:
            raise SandboxError(400, "sandbox.error_caption_long")
        contents = [await self._content(kind, upload) for upload in uploads]
        album = kind in ("photo", "document") and len(contents) > 1
        group_ids = [str(10**17 + secrets.randbelow(10**17)) for _ in range(0, len(contents), _ALBUM_SIZE)]
        updates = []
        for index, content in enumerate(contents):
            extra: JsonDict = {"caption": caption} if index == 0 and caption else {}
            if album:
                extra["media_group_id"] = group_ids[index // _ALBUM_SIZE]
            updates.append(self.telegram.message_update(self.profile, **content, **extra))
        for update in updates:
            await self._deliver(update)
        return [int(update["message"]["message_id"]) for update in updates]

    async def _content(self, kind: str, upload: Upload) -> JsonDict:
        """The ``message_update`` arguments for one file."""
        if kind == "photo":
            return {"photo": await as_photo(upload)}
        if kind == "document":
            return {"document": (upload.data, upload.name, upload.mime_type)}
        data, duration = await as_media(upload, kind, self._scratch_dir)
        if kind == "audio":
            return {"audio": (data, duration, upload.name)}
        return {kind: (data, duration)}

    async def press(self, message_id: Any, data: str) -> JsonDict | None:
        """Press the inline button with ``data``; the bot's answer (None: no text within 10 s)."""
        message = self._message(message_id)
        if data not in _callback_data(message):
            raise SandboxError(400, "sandbox.error_no_button", message_id=message_id)
        update = self.telegram.callback_update(self.profile, data, message=message)
        query_id = update["callback_query"]["id"]
        await self._deliver(update)
        answer = await _wait_for(lambda: self.telegram.callback_answers.get(query_id))
        if answer is None or not answer.get("text"):
            return None
        return {"text": str(answer["text"]), "show_alert": bool(answer.get("show_alert"))}

    async def pay(self, message_id: Any) -> str | None:
        """Pay the invoice in a message with Stars: pre-checkout, then the successful payment.

        Returns None when paid, else the bot's reason for refusing.
        """
        message = self._message(message_id)
        invoice = message.get("invoice")
        payload = self.telegram.invoice_payload(self.profile.id, int(message["message_id"]))
        if not isinstance(invoice, dict) or payload is None:
            raise SandboxError(400, "sandbox.error_not_invoice", message_id=message_id)
        currency, amount = str(invoice["currency"]), int(invoice["total_amount"])
        update = self.telegram.pre_checkout_update(
            self.profile, currency=currency, total_amount=amount, invoice_payload=payload
        )
        query_id = update["pre_checkout_query"]["id"]
        await self._deliver(update)
        answer = await _wait_for(lambda: self.telegram.pre_checkout_answers.get(query_id))
        if answer is None:
            raise SandboxError(504, "sandbox.error_no_pre_checkout_answer")
        if not answer["ok"]:
            return str(answer.get("error_message") or "")
        paid = self.telegram.successful_payment_update(
            self.profile,
            currency=currency,
            total_amount=amount,
            invoice_payload=payload,
            telegram_payment_charge_id=f"sandbox_{secrets.token_hex(12)}",
        )
        await self._deliver(paid)
        return None

    def _message(self, message_id: Any) -> JsonDict:
        if isinstance(message_id, bool) or not isinstance(message_id, int):
            raise SandboxError(400, "sandbox.error_message_id")
        for message in self.telegram.chat_messages(self.profile.id):
            if message["message_id"] == message_id:
                return message
        raise SandboxError(404, "sandbox.error_no_message", message_id=message_id)


def _callback_data(message: JsonDict) -> set[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard") or []
    return {str(button["callback_data"]) for row in rows for button in row if "callback_data" in button}


async def _wait_for(get: Callable[[], JsonDict | None]) -> JsonDict | None:
    """The bot's answer, or None after ANSWER_TIMEOUT. It usually came during the webhook call,
    but a handler may answer later; polling 20 times a second is cheap enough here."""
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while (found := get()) is None:  # noqa: ASYNC110 - the fake has no event for answers
                await asyncio.sleep(0.05)
            return found
    except TimeoutError:
        return None
