"""The fake Telegram server's message methods."""

from __future__ import annotations

import copy
import secrets
import time

from aisha.sandbox.telegram.constants import (
    _ALBUM_MAX,
    _ALBUM_MIN,
    _COPIED_FIELDS,
    _COPYABLE,
    _MEDIA_KINDS,
    _NOT_MODIFIED,
    JsonDict,
)
from aisha.sandbox.telegram.models import (
    _ApiError,
    _bad_request,
    _ChatLog,
    _Handler,
    _Request,
    _StoredMessage,
)
from aisha.sandbox.telegram.params import (
    _api_message,
    _bool,
    _caption_content,
    _chat_id,
    _formatted,
    _inline_markup,
    _int,
    _reply_markup,
)
from aisha.sandbox.telegram.updates import UpdateFeed
from aisha.telegram_html import TEXT_LIMIT, utf16_len


class MessageMethods(UpdateFeed):
    """Bot API methods that send, copy, edit and delete messages, with Telegram's refusals."""

    async def _send_message(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params)
        text, entities = _formatted(req.params, "text", "entities")
        if text is None or not text.strip():
            raise _bad_request("message text is empty")
        if utf16_len(text) > TEXT_LIMIT:
            raise _bad_request("message is too long")
        content: JsonDict = {"text": text}
        if entities:
            content["entities"] = entities
        if isinstance(req.params.get("link_preview_options"), dict):
            content["link_preview_options"] = req.params["link_preview_options"]
        return self._new_bot_message(chat_id, req.params, content)

    async def _copy_message(self, req: _Request) -> JsonDict:
        """A copy of a message the bot can see, sent as the bot's own; returns a MessageId only.
        A new caption replaces a media message's one; a text message has none to replace."""
        chat_id = _chat_id(req.params)
        from_chat_id = _int(req.params, "from_chat_id")
        stored = self._chats.get(from_chat_id, _ChatLog()).messages.get(_int(req.params, "message_id"))
        if stored is None:
            raise _bad_request("message to copy not found")
        original = stored.message
        if "invoice" in original or not any(kind in original for kind in _COPYABLE):
            raise _bad_request("message can't be copied")
        content = {key: copy.deepcopy(original[key]) for key in _COPIED_FIELDS if key in original}
        if req.params.get("caption") is not None and "text" not in original:
            content.pop("caption", None)
            content.pop("caption_entities", None)
            content.update(_caption_content(req.params))
        sent = self._new_bot_message(chat_id, req.params, content)
        return {"message_id": sent["message_id"]}

    def _media_sender(self, kind: str) -> _Handler:
        async def send(req: _Request) -> JsonDict:
            chat_id = _chat_id(req.params)
            stored = self._resolve_input_file(req.params.get(kind), req.uploads, kind=kind)
            content = {kind: self._media_object(kind, stored, req.params)}
            content.update(_caption_content(req.params))
            return self._new_bot_message(chat_id, req.params, content)

        return send

    async def _send_media_group(self, req: _Request) -> list[JsonDict]:
        chat_id = _chat_id(req.params)
        media = req.params.get("media")
        if media is None or media == "":
            raise _bad_request('parameter "media" is required')
        if not isinstance(media, list):
            raise _bad_request("expected an Array of InputMedia")
        if not media:
            raise _bad_request("there are no messages to send")
        if len(media) > _ALBUM_MAX:
            raise _bad_request("too many messages to send as an album")
        if len(media) < _ALBUM_MIN:
            # The Bot API documents 2-10 items; one picture is sendPhoto's job.
            raise _bad_request(f"media group must include {_ALBUM_MIN}-{_ALBUM_MAX} items")
        kinds: set[str] = set()
        for item in media:
            if not isinstance(item, dict) or item.get("type") not in ("photo", "video", "audio", "document"):
                raise _bad_request("can't parse InputMedia: unsupported media type")
            kinds.add(str(item["type"]))
        for lonely in ("audio", "document"):
            if lonely in kinds and len(kinds) > 1:
                raise _bad_request(f"{lonely} can't be mixed with other media types")
        group_id = str(10**17 + secrets.randbelow(10**17))
        contents: list[JsonDict] = []
        for item in media:
            kind = str(item["type"])
            stored = self._resolve_input_file(item.get("media"), req.uploads, kind=kind)
            content: JsonDict = {kind: self._media_object(kind, stored, item), "media_group_id": group_id}
            content.update(_caption_content(item))
            contents.append(content)
        return [self._new_bot_message(chat_id, req.params, content) for content in contents]

    def _new_bot_message(self, chat_id: int, params: JsonDict, content: JsonDict) -> JsonDict:
        markup = _reply_markup(params)
        chat_log = self._chat_log(chat_id)
        chat_log.last_message_id += 1
        message: JsonDict = {
            "message_id": chat_log.last_message_id,
            "from": self._bot_user(),
            "chat": self._chat_dict(chat_id),
            "date": int(time.time()),
        }
        reply_to = self._reply_target(params, chat_log)
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        message.update(content)
        if markup is not None:
            if "inline_keyboard" in markup:
                # Message.reply_markup can only be an inline keyboard in the Bot API.
                message["reply_markup"] = markup
            elif "keyboard" in markup:
                chat_log.reply_keyboard = markup
            elif markup.get("remove_keyboard"):
                chat_log.reply_keyboard = None
        chat_log.messages[message["message_id"]] = _StoredMessage(message)
        return copy.deepcopy(message)

    def _reply_target(self, params: JsonDict, chat_log: _ChatLog) -> JsonDict | None:
        reply = params.get("reply_parameters")
        message_id = reply.get("message_id") if isinstance(reply, dict) else params.get("reply_to_message_id")
        if message_id is None:
            return None
        stored = chat_log.messages.get(int(message_id))
        if stored is None:
            allow = isinstance(reply, dict) and bool(reply.get("allow_sending_without_reply"))
            if allow or _bool(params, "allow_sending_without_reply"):
                return None
            raise _bad_request("message to be replied not found")
        target = _api_message(stored.message)
        target.pop("reply_to_message", None)  # Telegram does not nest replies further
        return target

    def _editable(self, params: JsonDict) -> _StoredMessage | None:
        """The bot message an edit refers to; None for inline messages (nothing stored)."""
        if params.get("inline_message_id"):
            return None
        chat_id = _chat_id(params)
        message_id = _int(params, "message_id")
        stored = self._chats.get(chat_id, _ChatLog()).messages.get(message_id)
        if stored is None:
            raise _bad_request("message to edit not found")
        if stored.message.get("from", {}).get("id") != self._bot_id:
            raise _bad_request("message can't be edited")
        return stored

    def _apply_edit(self, stored: _StoredMessage, changes: JsonDict, markup: JsonDict | None) -> JsonDict:
        message = stored.message
        before = {key: message.get(key) for key in changes}
        before_markup = message.get("reply_markup")
        after = {key: value or None for key, value in changes.items()}
        if {k: v or None for k, v in before.items()} == after and before_markup == markup:
            raise _ApiError(400, _NOT_MODIFIED)
        for key, value in changes.items():
            if value:
                message[key] = value
            else:
                message.pop(key, None)
        # An edit without reply_markup removes the inline keyboard, as on Telegram.
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        stored.edited = True
        return copy.deepcopy(message)

    async def _edit_message_text(self, req: _Request) -> JsonDict | bool:
        text, entities = _formatted(req.params, "text", "entities")
        if text is None or not text.strip():
            raise _bad_request("message text is empty")
        if utf16_len(text) > TEXT_LIMIT:
            raise _bad_request("MESSAGE_TOO_LONG")
        markup = _inline_markup(req.params)
        stored = self._editable(req.params)
        if stored is None:
            return True
        if "text" not in stored.message:
            raise _bad_request("there is no text in the message to edit")
        return self._apply_edit(stored, {"text": text, "entities": entities}, markup)

    async def _edit_message_caption(self, req: _Request) -> JsonDict | bool:
        caption = _caption_content(req.params)
        markup = _inline_markup(req.params)
        stored = self._editable(req.params)
        if stored is None:
            return True
        if not any(kind in stored.message for kind in _MEDIA_KINDS):
            raise _bad_request("there is no caption in the message to edit")
        changes = {"caption": caption.get("caption"), "caption_entities": caption.get("caption_entities")}
        return self._apply_edit(stored, changes, markup)

    async def _edit_message_reply_markup(self, req: _Request) -> JsonDict | bool:
        markup = _inline_markup(req.params)
        stored = self._editable(req.params)
        if stored is None:
            return True
        return self._apply_edit(stored, {}, markup)

    async def _edit_message_media(self, req: _Request) -> JsonDict | bool:
        media = req.params.get("media")
        if not isinstance(media, dict) or media.get("type") not in _MEDIA_KINDS:
            raise _bad_request("can't parse InputMedia: media not found")
        kind = str(media["type"])
        markup = _inline_markup(req.params)
        stored = self._editable(req.params)
        if stored is None:
            return True
        if not any(key in stored.message for key in _MEDIA_KINDS):
            raise _bad_request("there is no media in the message to edit")
        new_file = self._resolve_input_file(media.get("media"), req.uploads, kind=kind)
        for key in (*_MEDIA_KINDS, "caption", "caption_entities"):
            stored.message.pop(key, None)
        stored.message[kind] = self._media_object(kind, new_file, media)
        stored.message.update(_caption_content(media))
        stored.message.pop("reply_markup", None)
        if markup is not None:
            stored.message["reply_markup"] = markup
        stored.message["edit_date"] = int(time.time())
        stored.edited = True
        return copy.deepcopy(stored.message)

    async def _delete_message(self, req: _Request) -> bool:
        chat_id = _chat_id(req.params)
        message_id = _int(req.params, "message_id")
        chat_log = self._chats.get(chat_id)
        if chat_log is None or chat_log.messages.pop(message_id, None) is None:
            raise _bad_request("message to delete not found")
        return True

    async def _delete_messages(self, req: _Request) -> bool:
        chat_id = _chat_id(req.params)
        ids = req.params.get("message_ids")
        if not isinstance(ids, list) or not ids:
            raise _bad_request("message_ids is empty")
        chat_log = self._chats.get(chat_id)
        for message_id in ids:
            if chat_log is not None:
                chat_log.messages.pop(int(message_id), None)
        return True
