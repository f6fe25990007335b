"""The fake Telegram server's updates: builders, getUpdates queue, webhook posts."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import secrets
import time

import aiohttp

from aisha.sandbox.telegram.calls import CallLog
from aisha.sandbox.telegram.constants import _LEADING_COMMAND_RE, JsonDict
from aisha.sandbox.telegram.images import image_size
from aisha.sandbox.telegram.models import FakeUser, _Charge, _Request, _StoredMessage, _Upload
from aisha.sandbox.telegram.params import (
    _api_message,
    _decode_form_value,
    _decode_json_fields,
    _photo_size,
    _read_multipart,
    _update_allowed,
)
from aisha.telegram_html import utf16_len


class UpdateFeed(CallLog):
    """Updates: built for fake users, queued for getUpdates or posted to the webhook."""

    def next_update_id(self) -> int:
        self._last_update_id += 1
        return self._last_update_id

    def _next_query_id(self) -> str:
        self._last_query_number += 1
        return f"{self._bot_id}{self._last_query_number:08d}"

    def queue_update(self, update: JsonDict) -> None:
        """Queue an update for ``getUpdates`` (and wake a pending long poll)."""
        if "update_id" not in update:
            update["update_id"] = self.next_update_id()
        else:
            self._last_update_id = max(self._last_update_id, int(update["update_id"]))
        self._remember_update(update)
        self._updates.append(update)
        self._delivered[int(update["update_id"])] += 1
        self._wake_pollers()

    @property
    def pending_updates(self) -> list[JsonDict]:
        """Updates queued and not yet confirmed by a ``getUpdates`` offset."""
        return list(self._updates)

    async def post_webhook(self, url: str, update: JsonDict, *, secret: str | None = None) -> int:
        """POST an update to a webhook like Telegram does; return the HTTP status.

        A method call in the webhook's reply body (aiogram's "reply into webhook") is executed
        and recorded like a normal request.
        """
        if "update_id" not in update:
            update["update_id"] = self.next_update_id()
        self._remember_update(update)
        self._delivered[int(update["update_id"])] += 1
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        async with self._client.post(url, json=update, headers=headers) as response:
            status = response.status
            if 200 <= status < 300:
                await self._run_webhook_reply(response)
        # The app answers a webhook once it has handled the update (or given up on it).
        self.mark_handled(int(update["update_id"]))
        return status

    async def deliver(self, update: JsonDict) -> int | None:
        """Send an update the way the bot asked for: to its webhook if set, else to getUpdates.

        Returns the webhook's HTTP status, or None when the update was queued or filtered out
        by the webhook's ``allowed_updates``.
        """
        webhook = self._webhook
        if webhook is None:
            self.queue_update(update)
            return None
        if not _update_allowed(update, webhook.allowed_updates):
            return None
        try:
            status = await self.post_webhook(webhook.url, update, secret=webhook.secret_token)
        except aiohttp.ClientError as exc:
            self._webhook_error = (int(time.time()), f"Connection failed: {exc!r}")
            raise
        if not 200 <= status < 300:
            self._webhook_error = (int(time.time()), f"Wrong response from the webhook: {status}")
        return status

    async def _run_webhook_reply(self, response: aiohttp.ClientResponse) -> None:
        if response.content_type == "application/json":
            try:
                body = await response.json()
            except ValueError:
                return
            if not isinstance(body, dict) or "method" not in body:
                return
            raw: JsonDict = dict(body)
            uploads: dict[str, _Upload] = {}
        elif response.content_type.startswith("multipart/"):
            reader = aiohttp.MultipartReader(response.headers, response.content)
            fields, uploads = await _read_multipart(reader)
            raw = {key: _decode_form_value(key, value) for key, value in fields.items()}
        else:
            return
        method = str(raw.pop("method", ""))
        if not method:
            return
        params = _decode_json_fields(raw)
        name, handler = self._handlers.get(method.lower(), (method, None))
        await self._execute(self._record(name, params, uploads), handler, _Request(params, uploads))

    def _drop_pending_updates(self) -> None:
        for update in self._updates:
            self.mark_handled(int(update["update_id"]))  # nothing more comes of it
        self._updates.clear()

    def _wake_pollers(self) -> None:
        event, self._update_event = self._update_event, asyncio.Event()
        event.set()

    def _remember_update(self, update: JsonDict) -> None:
        """Put the user's side of the conversation into the chat log."""
        for key, edited in (("message", False), ("edited_message", True)):
            message = update.get(key)
            if not isinstance(message, dict):
                continue
            chat_id = int(message["chat"]["id"])
            chat_log = self._chat_log(chat_id)
            message_id = int(message["message_id"])
            chat_log.last_message_id = max(chat_log.last_message_id, message_id)
            chat_log.messages[message_id] = _StoredMessage(copy.deepcopy(message), edited=edited)
        payment = (update.get("message") or {}).get("successful_payment")
        if isinstance(payment, dict) and "telegram_payment_charge_id" in payment:
            user_id = int(update["message"]["from"]["id"])
            self._charges.setdefault(str(payment["telegram_payment_charge_id"]), _Charge(user_id))
        self._changed()

    def message_update(
        self,
        user: FakeUser,
        text: str | None = None,
        *,
        chat_id: int | None = None,
        photo: bytes | None = None,
        photo_size: tuple[int, int] | None = None,
        document: tuple[bytes, str, str] | None = None,
        voice: tuple[bytes, int] | None = None,
        audio: tuple[bytes, int, str] | None = None,
        video: tuple[bytes, int] | None = None,
        video_note: tuple[bytes, int] | None = None,
        caption: str | None = None,
        media_group_id: str | None = None,
        reply_to_message: JsonDict | None = None,
        successful_payment: JsonDict | None = None,
        update_id: int | None = None,
    ) -> JsonDict:
        """A ``message`` update from ``user``; file bytes are registered so the bot can fetch them.

        ``document`` is ``(bytes, file_name, mime_type)``, ``voice`` and ``video`` and
        ``video_note`` are ``(bytes, duration)``, ``audio`` is ``(bytes, duration, file_name)``.
        ``photo_size`` overrides the width/height read from the image header.
        """
        self._users[user.id] = user
        chat = user.id if chat_id is None else chat_id
        chat_log = self._chat_log(chat)
        chat_log.last_message_id += 1
        message: JsonDict = {
            "message_id": chat_log.last_message_id,
            "from": user.to_dict(),
            "chat": self._chat_dict(chat),
            "date": int(time.time()),
        }
        if text is not None:
            message["text"] = text
            match = _LEADING_COMMAND_RE.match(text)
            if match:
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(match[0])}]
        if photo is not None:
            width, height = photo_size or image_size(photo) or (1280, 1280)
            stored = self._store_file(
                photo, file_path_hint="photos/photo.jpg", mime_type="image/jpeg", width=width, height=height
            )
            message["photo"] = [_photo_size(stored, width, height)]
        if document is not None:
            content, file_name, mime = document
            stored = self._store_file(
                content, file_path_hint=f"documents/{file_name}", file_name=file_name, mime_type=mime
            )
            message["document"] = self._media_object("document", stored, {})
        if voice is not None:
            stored = self._store_file(voice[0], file_path_hint="voice/voice.oga", mime_type="audio/ogg")
            message["voice"] = self._media_object("voice", stored, {"duration": voice[1]})
        if audio is not None:
            content, duration, file_name = audio
            stored = self._store_file(content, file_path_hint=f"music/{file_name}", file_name=file_name)
            message["audio"] = self._media_object("audio", stored, {"duration": duration})
        if video is not None:
            stored = self._store_file(video[0], file_path_hint="videos/video.mp4", mime_type="video/mp4")
            message["video"] = self._media_object("video", stored, {"duration": video[1]})
        if video_note is not None:
            stored = self._store_file(
                video_note[0], file_path_hint="video_notes/note.mp4", mime_type="video/mp4"
            )
            message["video_note"] = self._media_object("video_note", stored, {"duration": video_note[1]})
        if caption is not None:
            message["caption"] = caption
        if media_group_id is not None:
            message["media_group_id"] = media_group_id
        if reply_to_message is not None:
            message["reply_to_message"] = _api_message(reply_to_message)
        if successful_payment is not None:
            message["successful_payment"] = self._successful_payment(user, successful_payment)
        update = {"update_id": self.next_update_id() if update_id is None else update_id, "message": message}
        self._changed()
        return update

    def _successful_payment(self, user: FakeUser, fields: JsonDict) -> JsonDict:
        """A ``SuccessfulPayment`` with ``fields`` over fake defaults; its charge is known from now on."""
        payment: JsonDict = {
            "currency": "XTR",
            "total_amount": 1,
            "invoice_payload": "",
            "telegram_payment_charge_id": f"stxFake{secrets.token_hex(12)}",
            "provider_payment_charge_id": f"fake_{secrets.token_hex(8)}",
        }
        payment.update(fields)
        # Known from now on, so refundStarPayment works even if the update bypasses the server.
        self._charges.setdefault(str(payment["telegram_payment_charge_id"]), _Charge(user.id))
        return payment

    def successful_payment_update(
        self,
        user: FakeUser,
        *,
        currency: str,
        total_amount: int,
        invoice_payload: str,
        telegram_payment_charge_id: str | None = None,
    ) -> JsonDict:
        """A ``message`` update carrying ``successful_payment`` (what follows an approved pre-checkout)."""
        payment: JsonDict = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": invoice_payload,
        }
        if telegram_payment_charge_id is not None:
            payment["telegram_payment_charge_id"] = telegram_payment_charge_id
        return self.message_update(user, successful_payment=payment)

    def refunded_payment_update(
        self,
        user: FakeUser,
        *,
        telegram_payment_charge_id: str,
        total_amount: int,
        invoice_payload: str = "",
        currency: str = "XTR",
    ) -> JsonDict:
        """A ``message`` update carrying ``refunded_payment`` (Bot API 7.10): the Stars of a
        payment went back to the user outside the bot. The charge counts as refunded from now
        on, so a later refundStarPayment gets CHARGE_ALREADY_REFUNDED, as from Telegram."""
        update = self.message_update(user)
        update["message"]["refunded_payment"] = {
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": invoice_payload,
            "telegram_payment_charge_id": telegram_payment_charge_id,
        }
        charge = self._charges.setdefault(telegram_payment_charge_id, _Charge(user.id))
        charge.refunded = True
        return update

    def callback_update(self, user: FakeUser, data: str, *, message: JsonDict) -> JsonDict:
        """A ``callback_query`` update: ``user`` pressed a button with ``data`` under ``message``.

        The current version of the message (after edits) is sent, as Telegram does.
        """
        self._users[user.id] = user
        chat_id = int(message["chat"]["id"])
        stored = self._chat_log(chat_id).messages.get(int(message["message_id"]))
        current = _api_message(stored.message if stored is not None else message)
        query_id = self._next_query_id()
        query: JsonDict = {
            "id": query_id,
            "from": user.to_dict(),
            "message": current,
            "chat_instance": str(int(hashlib.sha256(str(chat_id).encode()).hexdigest()[:15], 16)),
            "data": data,
        }
        self._open_callback_queries[query_id] = query
        update = {"update_id": self.next_update_id(), "callback_query": query}
        self._changed()
        return update

    def pre_checkout_update(
        self, user: FakeUser, *, currency: str, total_amount: int, invoice_payload: str
    ) -> JsonDict:
        """A ``pre_checkout_query`` update: ``user`` pressed Pay on an invoice."""
        self._users[user.id] = user
        query_id = self._next_query_id()
        query: JsonDict = {
            "id": query_id,
            "from": user.to_dict(),
            "currency": currency,
            "total_amount": total_amount,
            "invoice_payload": invoice_payload,
        }
        self._open_pre_checkouts[query_id] = query
        update = {"update_id": self.next_update_id(), "pre_checkout_query": query}
        self._changed()
        return update
