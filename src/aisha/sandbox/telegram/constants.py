"""Limits, field lists and layouts of the fake Telegram Bot API, as the real one has them."""

from __future__ import annotations

import re
from typing import Any

JsonDict = dict[str, Any]
# Form fields that are plain strings even when they look like JSON ("42", "true", "[x]").
_STRING_FIELDS = frozenset(
    {
        "text",
        "caption",
        "title",
        "description",
        "payload",
        "start_parameter",
        "provider_token",
        "provider_data",
        "url",
        "secret_token",
        "ip_address",
        "callback_query_id",
        "pre_checkout_query_id",
        "shipping_query_id",
        "inline_query_id",
        "inline_message_id",
        "telegram_payment_charge_id",
        "error_message",
        "file_id",
        "parse_mode",
        "currency",
        "action",
        "performer",
        "emoji",
        "name",
        "short_description",
        "language_code",
        "business_connection_id",
        "message_effect_id",
        "first_name",
        "last_name",
        "phone_number",
        "vcard",
        "address",
        "question",
        "explanation",
        "photo",
        "document",
        "audio",
        "voice",
        "video",
        "video_note",
        "animation",
        "sticker",
        "thumbnail",
        "cover",
    }
)
# Fields that carry JSON objects; some clients send them as JSON strings even in a JSON body.
_JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "entities",
        "caption_entities",
        "media",
        "prices",
        "commands",
        "scope",
        "allowed_updates",
        "menu_button",
        "link_preview_options",
        "reply_parameters",
        "suggested_tip_amounts",
        "message_ids",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Update types Telegram leaves out unless asked for explicitly.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_MEDIA_KINDS = ("photo", "video", "animation", "audio", "document", "voice", "video_note", "sticker")
# What copyMessage carries over; a message with none of it (a service message, an invoice, a
# payment) can't be copied, as on Telegram.
_COPYABLE = (*_MEDIA_KINDS, "text", "location", "contact", "poll", "dice", "venue")
_COPIED_FIELDS = (*_COPYABLE, "entities", "caption", "caption_entities", "link_preview_options")
_BUTTON_ACTIONS = frozenset(
    {
        "callback_data",
        "url",
        "web_app",
        "login_url",
        "switch_inline_query",
        "switch_inline_query_current_chat",
        "switch_inline_query_chosen_chat",
        "copy_text",
        "callback_game",
        "pay",
    }
)
# Methods that change nothing worth showing or keeping; every other successful call counts as a change.
_READ_ONLY_METHODS = frozenset(
    {
        "getme",
        "getupdates",
        "getwebhookinfo",
        "sendchataction",
        "getfile",
        "getmycommands",
        "getchat",
        "getchatmenubutton",
        "answercallbackquery",
        "answerprecheckoutquery",
        "close",
        "logout",
    }
)
_STATE_FORMAT = 1
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_LEADING_COMMAND_RE = re.compile(r"^/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{1,64})?")
_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_CAPTION_LIMIT = 1024
_CALLBACK_ANSWER_LIMIT = 200
_CALLBACK_DATA_LIMIT = 64  # bytes
_KEYBOARD_BUTTON_LIMIT = 100  # buttons in one markup ("reply markup is too long" beyond)
_ALBUM_MIN, _ALBUM_MAX = 2, 10
_NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
_STALE_QUERY = "Bad Request: query is too old and response timeout expired or query ID is invalid"
_WRONG_FILE = "Bad Request: wrong file identifier/HTTP URL specified"
_MAX_BODY = 64 * 1024 * 1024  # bots may upload documents up to 50 MB
_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile on the public Bot API: "file is too big" beyond
# Folder and default extension per media kind, mirroring Telegram's file_path layout.
_FILE_LAYOUT: dict[str, tuple[str, str]] = {
    "photo": ("photos", ".jpg"),
    "document": ("documents", ""),
    "audio": ("music", ".mp3"),
    "voice": ("voice", ".oga"),
    "video": ("videos", ".mp4"),
    "video_note": ("video_notes", ".mp4"),
    "animation": ("animations", ".mp4"),
    "sticker": ("stickers", ".webp"),
}
_DEFAULT_MIME: dict[str, str] = {
    "audio": "audio/mpeg",
    "voice": "audio/ogg",
    "video": "video/mp4",
    "video_note": "video/mp4",
    "animation": "video/mp4",
}
