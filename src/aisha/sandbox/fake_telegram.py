"""A fake Telegram Bot API server that the real aiogram ``Bot`` talks to over HTTP.

Tests and the browser sandbox point aiogram at it with
``AiohttpSession(api=TelegramAPIServer.from_base(server.base_url))``, so the whole client stack
(multipart encoding, pydantic parsing, error mapping, long polling) runs for real. The server
answers with result shapes from the Bot API docs, remembers what the bot sent per chat, stores
uploaded files so ``getFile`` + download return the same bytes, and reproduces the errors a bot
meets in production (unparseable HTML, "message is not modified", flood waits, stale callback
queries) so those paths can be tested too.

It refuses what the real Bot API refuses, with Telegram's own 400 descriptions: HTML that TDLib's
parser rejects (ported here with its messages and byte offsets), texts over 4096 and captions over
1024 UTF-16 units after parsing, callback data over 64 bytes, inline buttons without exactly one
action or with empty text, malformed reply keyboards, albums outside 2-10 items or mixing documents
or audio with other kinds, an edit that changes nothing, callback answers over 200 characters.
Every refusal is recorded; those a test did not ask for (``fail_next``, ``fail_nth`` and
``expect_refusal`` mark the ones it did) are listed by ``unexpected_refusals`` and make
``wait_for_call`` raise :class:`RefusedCall`, so a message Telegram would refuse fails its test.

It runs inside the caller's event loop (``aiohttp.web``); nothing here blocks.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import mimetypes
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox._state import read_json, write_json_atomically
from aisha.sandbox.faults import Fault, FaultPlan, never_answer

__all__ = [
    "FakeTelegramServer",
    "FakeUser",
    "RecordedCall",
    "RefusedCall",
    "StoredFile",
    "WebhookConfig",
    "image_size",
    "parse_html",
]

log = logging.getLogger(__name__)

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
_TEXT_LIMIT = 4096
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


# --------------------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class FakeUser:
    """A Telegram user that sends updates to the bot."""

    id: int
    first_name: str = "Test"
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = "en"

    def to_dict(self) -> JsonDict:
        """The Bot API ``User`` object."""
        user: JsonDict = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.last_name is not None:
            user["last_name"] = self.last_name
        if self.username is not None:
            user["username"] = self.username
        if self.language_code is not None:
            user["language_code"] = self.language_code
        return user

    def private_chat(self) -> JsonDict:
        """The Bot API ``Chat`` object of this user's private chat with the bot."""
        chat: JsonDict = {"id": self.id, "type": "private", "first_name": self.first_name}
        if self.last_name is not None:
            chat["last_name"] = self.last_name
        if self.username is not None:
            chat["username"] = self.username
        return chat


@dataclass(slots=True)
class RecordedCall:
    """One Bot API request as the server saw it."""

    method: str
    params: JsonDict
    files: dict[str, bytes]
    time: datetime
    number: int = 0  # 1, 2, 3… in the order the server got them (the sandbox panel asks by it)
    failed: bool = False
    # The error JSON returned when failed, else the "result" returned (filled once answered).
    error: JsonDict | None = None
    result: Any = None
    answered: bool = False
    # A refusal the test asked for: injected by fail_next/fail_nth, announced with
    # expect_refusal, or a call with a wrong token (only a test makes those).
    expected: bool = False

    @property
    def description(self) -> str:
        """Telegram's error description when the call failed, else ""."""
        if not self.failed or self.error is None:
            return ""
        return str(self.error.get("description") or self.error.get("fault") or "")


class RefusedCall(AssertionError):
    """The bot made a call the fake refused the way Telegram would, and the test did not expect it."""

    def __init__(self, call: RecordedCall) -> None:
        code = call.error.get("error_code", "") if call.error else ""
        super().__init__(
            f"Telegram would refuse this {call.method}: {code} {call.description}; "
            f"params: {_short_params(call.params)}"
        )
        self.call = call


@dataclass(slots=True)
class _ExpectedRefusal:
    method: str  # lower-case
    contains: str
    remaining: int


@dataclass(slots=True)
class StoredFile:
    """A file known to the server: uploaded by the bot, sent by a fake user, or a URL."""

    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes | None
    url: str | None = None
    file_name: str | None = None
    mime_type: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def file_size(self) -> int | None:
        return None if self.content is None else len(self.content)

    def to_file(self) -> JsonDict:
        """The Bot API ``File`` object returned by ``getFile``."""
        result: JsonDict = {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_path": self.file_path,
        }
        if self.file_size is not None:
            result["file_size"] = self.file_size
        return result


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """What the bot passed to ``setWebhook``."""

    url: str
    secret_token: str | None = None
    allowed_updates: tuple[str, ...] | None = None
    max_connections: int | None = None


@dataclass(slots=True)
class _Upload:
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(slots=True)
class _Request:
    params: JsonDict
    uploads: dict[str, _Upload]


@dataclass(slots=True)
class _StoredMessage:
    message: JsonDict
    edited: bool = False


@dataclass(slots=True)
class _ChatLog:
    last_message_id: int = 0
    messages: dict[int, _StoredMessage] = field(default_factory=dict)
    reply_keyboard: JsonDict | None = None


@dataclass(slots=True)
class _Failure:
    error_code: int
    description: str
    retry_after: int | None
    remaining: int


@dataclass(slots=True)
class _Charge:
    user_id: int
    refunded: bool = False


class _ApiError(Exception):
    """An error answer in Telegram's format, raised by a method handler."""

    def __init__(self, error_code: int, description: str, parameters: JsonDict | None = None) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def to_json(self) -> JsonDict:
        body: JsonDict = {"ok": False, "error_code": self.error_code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad_request(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


_Handler = Callable[[_Request], Awaitable[Any]]


# ----------------------------------------------------------------------------------- the server


class FakeTelegramServer(LoopbackServer):
    """An in-process Telegram Bot API server for one bot token.

    Use it as ``async with FakeTelegramServer() as server:`` and give ``server.base_url`` to
    aiogram's ``TelegramAPIServer.from_base``. Every request is recorded in ``calls``.
    """

    def __init__(
        self,
        token: str = "123456:TEST",  # noqa: S107 - a fake token for the fake server
        *,
        bot_username: str = "aisha_test_bot",
        bot_first_name: str = "Aisha",
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: Path | None = None,
        keep_calls: int | None = None,
        local_dir: Path | None = None,
        local_server_dir: str | None = None,
    ) -> None:
        """``state_dir``: keep the chats, files and counters there (saved on every change, loaded
        here), so a sandbox restarted on the same folder carries on the same conversation.
        ``keep_calls``: remember only about the newest N calls (a long sandbox session would
        otherwise hold every upload's bytes); None keeps all, as tests want.

        ``local_dir`` makes it a local Bot API server (``telegram-bot-api --local --dir``): getFile
        of any size writes the file to ``local_dir/<token>/...`` and answers with its absolute path
        there (no HTTP download, which answers 404), named as the server sees that folder:
        ``local_server_dir`` (a container's own path) or ``local_dir`` itself. Without it, the public
        Bot API: getFile of a file over 20 MB is refused ("file is too big")."""
        self._local_dir = local_dir
        self._local_server_dir = local_server_dir or (str(local_dir) if local_dir else None)
        self._keep_calls = keep_calls
        self._token = token
        prefix = token.split(":", 1)[0]
        self._bot_id = int(prefix) if prefix.isdigit() else 123456
        self._bot_username = bot_username
        self._bot_first_name = bot_first_name
        super().__init__(host=host, port=port)
        self._closing = False
        self._client: aiohttp.ClientSession | None = None

        self.calls: list[RecordedCall] = []
        self._calls_recorded = 0
        self.downloads: list[str] = []  # file paths fetched through /file/bot<token>/...
        # Unexpected exceptions inside the fake itself: tests can assert this stays empty.
        self.errors: list[str] = []
        self.callback_answers: dict[str, JsonDict] = {}
        self.pre_checkout_answers: dict[str, JsonDict] = {}

        self._cursors: dict[str, int] = {}
        self._call_event = asyncio.Event()
        self._expected_refusals: list[_ExpectedRefusal] = []
        # How many times each update id was queued for getUpdates or posted to a webhook (Telegram
        # may send one twice), and how many of those deliveries the bot has finished handling.
        self._delivered: Counter[int] = Counter()
        self._handled: Counter[int] = Counter()
        self._handled_event = asyncio.Event()
        self._failures: dict[str, deque[_Failure]] = {}
        self.faults = FaultPlan("telegram")  # fail_nth: the n-th call of a method fails

        self._last_update_id = 0
        self._updates: list[JsonDict] = []
        self._allowed_updates: tuple[str, ...] | None = None
        self._update_event = asyncio.Event()
        self._poll_generation = 0
        self._webhook: WebhookConfig | None = None
        self._webhook_error: tuple[int, str] | None = None

        self._users: dict[int, FakeUser] = {}
        self._chats: dict[int, _ChatLog] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._last_file_number = 0
        self._last_query_number = 0
        self._open_callback_queries: dict[str, JsonDict] = {}
        self._open_pre_checkouts: dict[str, JsonDict] = {}
        self._charges: dict[str, _Charge] = {}
        self._commands: dict[tuple[str, str], list[JsonDict]] = {}
        self._menu_buttons: dict[int | None, JsonDict] = {}
        self._invoice_links: dict[str, JsonDict] = {}
        self._invoice_payloads: dict[tuple[int, int], str] = {}  # (chat, message) -> payload

        # Increases on every change to a chat (messages, edits, keyboards, commands).
        self.version = 0
        self._listeners: list[Callable[[], None]] = []
        self._state_dir = state_dir
        if state_dir is not None:
            self._load_state(state_dir)

        handlers: dict[str, _Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "sendMessage": self._send_message,
            "copyMessage": self._copy_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "deleteMessage": self._delete_message,
            "deleteMessages": self._delete_messages,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "sendMediaGroup": self._send_media_group,
            "getFile": self._get_file,
            "sendInvoice": self._send_invoice,
            "createInvoiceLink": self._create_invoice_link,
            "answerPreCheckoutQuery": self._answer_pre_checkout_query,
            "refundStarPayment": self._refund_star_payment,
            "setMyCommands": self._set_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "getMyCommands": self._get_my_commands,
            "setChatMenuButton": self._set_chat_menu_button,
            "getChatMenuButton": self._get_chat_menu_button,
            "getChat": self._get_chat,
            "close": self._return_true,
            "logOut": self._return_true,
        }
        for kind in _MEDIA_KINDS:
            handlers["send" + "".join(part.title() for part in kind.split("_"))] = self._media_sender(kind)
        self._handlers: dict[str, tuple[str, _Handler]] = {
            name.lower(): (name, handler) for name, handler in handlers.items()
        }

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        self._closing = False
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._handle_file)
        # Handler cancellation ends long polls whose client went away, as Telegram does.
        await self._listen(app, handler_cancellation=True)

    async def stop(self) -> None:
        """Answer pending long polls at once, then shut the server down."""
        if self._runner is None:
            return
        self._closing = True
        self._wake_pollers()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._close()

    @property
    def base_url(self) -> str:
        """``http://host:port`` — the value for TELEGRAM_API_URL / ``TelegramAPIServer.from_base``."""
        return self._root_url()

    @property
    def token(self) -> str:
        return self._token

    @property
    def bot_id(self) -> int:
        return self._bot_id

    @property
    def bot_username(self) -> str:
        return self._bot_username

    @property
    def bot_first_name(self) -> str:
        return self._bot_first_name

    @property
    def webhook(self) -> WebhookConfig | None:
        return self._webhook

    # ------------------------------------------------------------------------- call recording

    def calls_of(self, method: str) -> list[RecordedCall]:
        key = method.lower()
        return [call for call in self.calls if call.method.lower() == key]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[RecordedCall], bool] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with a per-call timeout
        refused: bool = False,
    ) -> RecordedCall:
        """Return the next ``method`` call after the one this returned last time, once answered.

        Each method has its own cursor, so repeated ``wait_for_call("sendMessage")`` walks
        through the bot's messages in order. With a predicate, calls before the match are
        skipped for good. A matching call the fake refused raises :class:`RefusedCall` at once
        (with Telegram's error description), unless the refusal was expected (fault injection,
        ``expect_refusal``) or ``refused=True`` asks for refused calls too. ``getUpdates`` is
        returned as soon as it arrives (a long poll is answered only later).
        """
        key = method.lower()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._call_event
                    index = self._next_match(key, predicate)
                    if index is not None and (self.calls[index].answered or key == "getupdates"):
                        call = self.calls[index]
                        self._cursors[key] = index + 1
                        if call.failed and not call.expected and not refused:
                            raise RefusedCall(call)
                        return call
                    await event.wait()
        except TimeoutError:
            recent = ", ".join(call.method for call in self.calls[-10:]) or "none"
            raise TimeoutError(
                f"no matching {method} call within {timeout}s (last calls: {recent})"
            ) from None

    def _next_match(self, key: str, predicate: Callable[[RecordedCall], bool] | None) -> int | None:
        for index in range(self._cursors.get(key, 0), len(self.calls)):
            call = self.calls[index]
            if call.method.lower() == key and (predicate is None or predicate(call)):
                return index
        return None

    def expect_refusal(self, method: str, contains: str = "", *, times: int = 1) -> None:
        """The next ``times`` refusals of ``method`` whose description contains ``contains`` are
        ones the test means to cause: ``wait_for_call`` returns them and ``unexpected_refusals``
        leaves them out."""
        self._expected_refusals.append(_ExpectedRefusal(method.lower(), contains, times))

    def unexpected_refusals(self) -> list[RecordedCall]:
        """Calls the fake refused as Telegram would, that no test asked for: each one is a
        message, keyboard or request the real Telegram would have refused too."""
        return [call for call in self.calls if call.failed and not call.expected]

    def mark_handled(self, update_id: int) -> None:
        """The bot finished handling this update. A webhook's answer says so by itself; with
        polling, whoever runs the bot in-process reports it (the e2e harness wraps the
        dispatcher's ``feed_update``)."""
        self._handled[update_id] += 1
        event, self._handled_event = self._handled_event, asyncio.Event()
        event.set()

    async def wait_until_handled(
        self,
        *updates: int | JsonDict,
        timeout: float = 5.0,  # noqa: ASYNC109 - tests read better with a per-call timeout
    ) -> None:
        """Wait until the bot has finished handling ``updates`` (updates or their ids; none: every
        update delivered so far): then whatever it was going to send in answer has been sent,
        and asserting that nothing happened checks something. An update delivered twice must
        have been handled twice."""
        ids = {int(u["update_id"]) if isinstance(u, dict) else u for u in updates} or set(self._delivered)

        def missing() -> list[int]:
            return sorted(i for i in ids if self._handled[i] < max(self._delivered[i], 1))

        try:
            async with asyncio.timeout(timeout):
                while missing():
                    await self._handled_event.wait()
        except TimeoutError:
            raise TimeoutError(f"updates {missing()} were not handled within {timeout}s") from None

    def clear_calls(self) -> None:
        self.calls.clear()
        self.downloads.clear()
        self._cursors.clear()

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        *,
        description: str | None = None,
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with a Telegram error.

        ``retry_after`` only applies to 429 (Telegram sends it with flood waits alone, and
        aiogram would turn any error carrying it into ``TelegramRetryAfter``).
        """
        if error_code == 429 and retry_after is not None:
            default = f"Too Many Requests: retry after {retry_after}"
        else:
            retry_after = None
            default = {
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden: bot was blocked by the user",
                404: "Not Found",
                409: "Conflict",
                429: "Too Many Requests",
            }.get(error_code, "Internal Server Error")
        failure = _Failure(error_code, description or default, retry_after, times)
        self._failures.setdefault(method.lower(), deque()).append(failure)

    def fail_nth(self, method: str, fault: Fault, n: int = 1) -> None:
        """The ``n``-th call of ``method`` from now fails with ``fault`` (403 is "bot was blocked
        by the user"; 429 asks to retry after 1 s; TIMEOUT never answers; RESET drops the line)."""
        self.faults.add(method, fault, n)

    def _take_failure(self, method: str) -> _ApiError | None:
        queue = self._failures.get(method.lower())
        if not queue:
            return None
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            queue.popleft()
        parameters = {"retry_after": failure.retry_after} if failure.retry_after is not None else None
        return _ApiError(failure.error_code, failure.description, parameters)

    def _take_expected_refusal(self, method: str, description: str) -> bool:
        key = method.lower()
        for expectation in self._expected_refusals:
            if expectation.method == key and expectation.contains in description:
                expectation.remaining -= 1
                if expectation.remaining <= 0:
                    self._expected_refusals.remove(expectation)
                return True
        return False

    def _notify_calls(self) -> None:
        event, self._call_event = self._call_event, asyncio.Event()
        event.set()

    # ----------------------------------------------------------------------------- HTTP layer

    def _token_ok(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.match_info["token"].encode(), self._token.encode())

    async def _handle_method(self, request: web.Request) -> web.StreamResponse:
        raw_method = request.match_info["method"]
        name, handler = self._handlers.get(raw_method.lower(), (raw_method, None))
        try:
            params, uploads = await _read_request(request)
        except _ApiError as error:
            return self._respond(self._record(name, {}, {}), error)
        call = self._record(name, params, uploads)
        if not self._token_ok(request):
            return self._respond(call, _ApiError(401, "Unauthorized"), expected=True)
        fault = self.faults.take(call.method)
        if fault is not None:
            return await self._inject(request, call, fault)
        return await self._execute(call, handler, _Request(params, uploads))

    async def _inject(self, request: web.Request, call: RecordedCall, fault: Fault) -> web.StreamResponse:
        status = fault.status
        if status is None:
            call.failed = call.answered = call.expected = True
            call.error = {"ok": False, "fault": fault.value}
            self._notify_calls()
            return await never_answer(request, fault)
        description = {
            403: "Forbidden: bot was blocked by the user",
            429: "Too Many Requests: retry after 1",
        }.get(status, "Internal Server Error")
        parameters = {"retry_after": 1} if status == 429 else None
        return self._respond(call, _ApiError(status, description, parameters), expected=True)

    async def _execute(self, call: RecordedCall, handler: _Handler | None, req: _Request) -> web.Response:
        failure = self._take_failure(call.method)
        if failure is not None:
            return self._respond(call, failure, expected=True)
        try:
            result = True if handler is None else await handler(req)
        except _ApiError as error:
            return self._respond(call, error)
        except Exception as exc:  # a bug in the fake must reach the test, not hang it
            log.exception("fake telegram: %s failed", call.method)
            self.errors.append(f"{call.method}: {exc!r}")
            return self._respond(call, _ApiError(500, f"Internal Server Error: {exc!r}"))
        call.result = result
        call.answered = True
        self._notify_calls()
        if call.method.lower() not in _READ_ONLY_METHODS:
            self._changed()
        return web.json_response({"ok": True, "result": result})

    def _record(self, method: str, params: JsonDict, uploads: dict[str, _Upload]) -> RecordedCall:
        files = {name: upload.data for name, upload in uploads.items()}
        self._calls_recorded += 1
        call = RecordedCall(
            method=method, params=params, files=files, time=datetime.now(UTC), number=self._calls_recorded
        )
        self.calls.append(call)
        if self._keep_calls is not None and len(self.calls) >= 2 * self._keep_calls:
            self._forget_calls(len(self.calls) - self._keep_calls)
        self._notify_calls()
        return call

    def _forget_calls(self, count: int) -> None:
        """Drop the oldest ``count`` calls; wait_for_call's cursors move along with the list."""
        del self.calls[:count]
        self._cursors = {method: max(0, cursor - count) for method, cursor in self._cursors.items()}

    def _respond(self, call: RecordedCall, error: _ApiError, *, expected: bool = False) -> web.Response:
        call.failed = call.answered = True
        call.error = error.to_json()
        call.expected = expected or self._take_expected_refusal(call.method, error.description)
        self._notify_calls()
        return web.json_response(call.error, status=error.error_code)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request):
            return web.json_response(_ApiError(401, "Unauthorized").to_json(), status=401)
        path = request.match_info["file_path"]
        stored = self._files_by_path.get(path)
        if stored is None or stored.content is None or self._local_dir is not None:
            return web.json_response(_ApiError(404, "Not Found").to_json(), status=404)
        self.downloads.append(path)
        return web.Response(body=stored.content, content_type=stored.mime_type or "application/octet-stream")

    # ---------------------------------------------------------------------------------- files

    def register_file(
        self,
        content: bytes,
        *,
        file_path_hint: str,
        file_name: str | None = None,
        mime_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> tuple[str, str]:
        """Store bytes the bot can ``getFile`` and download; return ``(file_id, file_unique_id)``.

        ``file_path_hint`` gives the folder and extension, e.g. ``"photos/x.jpg"``.
        """
        stored = self._store_file(
            content,
            file_path_hint=file_path_hint,
            file_name=file_name,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        self._changed()
        return stored.file_id, stored.file_unique_id

    def get_file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def _store_file(
        self,
        content: bytes | None,
        *,
        file_path_hint: str,
        url: str | None = None,
        file_name: str | None = None,
        mime_type: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> StoredFile:
        self._last_file_number += 1
        number = self._last_file_number
        folder, _, base = file_path_hint.rpartition("/")
        suffix = "." + base.rsplit(".", 1)[1] if "." in base else ""
        file_path = f"{folder or 'documents'}/file_{number}{suffix}"
        digest_source = content if content is not None else (url or "").encode()
        # Same bytes, same file_unique_id — as Telegram does; file_id differs per upload.
        unique = "AQAD" + hashlib.sha256(digest_source).hexdigest()[:16]
        if mime_type is None or mime_type == "application/octet-stream":
            guessed = mimetypes.guess_type(file_name or base)[0]
            mime_type = guessed or mime_type
        if content is not None and (width is None or height is None):
            size = image_size(content)
            if size is not None:
                width, height = size
        stored = StoredFile(
            file_id=f"BQAC{number:05d}{secrets.token_hex(8)}",
            file_unique_id=unique,
            file_path=file_path,
            content=content,
            url=url,
            file_name=file_name,
            mime_type=mime_type,
            width=width,
            height=height,
        )
        self._files[stored.file_id] = stored
        self._files_by_path[file_path] = stored
        if content is not None and self._state_dir is not None:
            _write_file(self._state_dir / "files" / file_path, content)
        return stored

    def _resolve_input_file(self, value: Any, uploads: dict[str, _Upload], *, kind: str) -> StoredFile:
        """Turn an InputFile parameter (attach://, direct part, URL or file_id) into a StoredFile."""
        folder, ext = _FILE_LAYOUT.get(kind, ("documents", ""))
        upload: _Upload | None = None
        if isinstance(value, str) and value.startswith("attach://"):
            upload = uploads.get(value.removeprefix("attach://"))
            if upload is None:
                raise _bad_request(f'file "{value}" not found in the request')
        elif value is None and kind in uploads:
            upload = uploads[kind]
        if upload is not None:
            if not upload.data:
                raise _bad_request("file must be non-empty")
            name = upload.filename
            hint_name = name if name and "." in name else f"file{ext}"
            return self._store_file(
                upload.data,
                file_path_hint=f"{folder}/{hint_name}",
                file_name=name,
                mime_type=upload.content_type,
            )
        if value is None or value == "":
            raise _bad_request(f"there is no {kind} in the request")
        if not isinstance(value, str):
            raise _bad_request(_WRONG_FILE.removeprefix("Bad Request: "))
        if value.startswith(("http://", "https://")):
            # Telegram would fetch the URL; the fake only remembers it.
            name = value.rsplit("/", 1)[-1].split("?", 1)[0]
            hint_name = name if "." in name else f"file{ext}"
            return self._store_file(None, file_path_hint=f"{folder}/{hint_name}", url=value, file_name=name)
        stored = self._files.get(value)
        if stored is None:
            raise _ApiError(400, _WRONG_FILE)
        return stored

    # ------------------------------------------------------------------------------ updates

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

    # ------------------------------------------------------------------------ update builders

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
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(match[0])}]
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
            payment: JsonDict = {
                "currency": "XTR",
                "total_amount": 1,
                "invoice_payload": "",
                "telegram_payment_charge_id": f"stxFake{secrets.token_hex(12)}",
                "provider_payment_charge_id": f"fake_{secrets.token_hex(8)}",
            }
            payment.update(successful_payment)
            message["successful_payment"] = payment
            # Known from now on, so refundStarPayment works even if the update bypasses the server.
            self._charges.setdefault(str(payment["telegram_payment_charge_id"]), _Charge(user.id))
        update = {"update_id": self.next_update_id() if update_id is None else update_id, "message": message}
        self._changed()
        return update

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

    # ----------------------------------------------------------------------- chat inspection

    def chat_messages(self, chat_id: int) -> list[JsonDict]:
        """The conversation in ``chat_id`` (both sides), oldest first, with an ``edited`` flag.

        Deleted messages are gone; edited ones show their latest content.
        """
        chat_log = self._chats.get(chat_id)
        if chat_log is None:
            return []
        ordered = (chat_log.messages[message_id] for message_id in sorted(chat_log.messages))
        return [{**copy.deepcopy(stored.message), "edited": stored.edited} for stored in ordered]

    def reply_keyboard(self, chat_id: int) -> JsonDict | None:
        """The reply keyboard currently shown in ``chat_id`` (set by the last ReplyKeyboardMarkup)."""
        chat_log = self._chats.get(chat_id)
        return (
            None
            if chat_log is None or chat_log.reply_keyboard is None
            else copy.deepcopy(chat_log.reply_keyboard)
        )

    def my_commands(self, *, scope: JsonDict | None = None, language_code: str = "") -> list[JsonDict]:
        return copy.deepcopy(self._commands.get(_commands_key(scope, language_code), []))

    def menu_button(self, chat_id: int | None = None) -> JsonDict | None:
        return copy.deepcopy(self._menu_buttons.get(chat_id))

    def invoice_for_link(self, link: str) -> JsonDict | None:
        """The ``createInvoiceLink`` parameters behind a link the bot created."""
        return copy.deepcopy(self._invoice_links.get(link))

    def commands_for(self, chat_id: int, language_code: str | None) -> list[JsonDict]:
        """The command menu a private chat shows: the narrowest scope set, in the user's language
        first, as Telegram resolves it."""
        scopes = ({"type": "chat", "chat_id": chat_id}, {"type": "all_private_chats"}, None)
        for scope in scopes:
            for language in (language_code or "", ""):
                commands = self._commands.get(_commands_key(scope, language))
                if commands:
                    return copy.deepcopy(commands)
        return []

    def invoice_payload(self, chat_id: int, message_id: int) -> str | None:
        """The ``payload`` the bot gave the invoice shown in this message (None: not an invoice)."""
        return self._invoice_payloads.get((chat_id, message_id))

    def _chat_log(self, chat_id: int) -> _ChatLog:
        return self._chats.setdefault(chat_id, _ChatLog())

    def _chat_dict(self, chat_id: int) -> JsonDict:
        if chat_id > 0:
            user = self._users.get(chat_id)
            return user.private_chat() if user else {"id": chat_id, "type": "private", "first_name": "User"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "type": kind, "title": "Test group"}

    def _bot_user(self) -> JsonDict:
        return {
            "id": self._bot_id,
            "is_bot": True,
            "first_name": self._bot_first_name,
            "username": self._bot_username,
        }

    # ---------------------------------------------------------------- changes and persistence

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, in the event loop) after every change to a chat."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        if self._state_dir is not None:
            write_json_atomically(self._state_dir / "state.json", self._snapshot())
        for listener in self._listeners:
            listener()

    def _snapshot(self) -> JsonDict:
        """What a restart must keep, as JSON; file bytes live next to it under ``files/``."""
        return {
            "format": _STATE_FORMAT,
            "version": self.version,
            "last_update_id": self._last_update_id,
            "last_file_number": self._last_file_number,
            "last_query_number": self._last_query_number,
            "users": [asdict(user) for user in self._users.values()],
            "chats": {
                str(chat_id): {
                    "last_message_id": chat_log.last_message_id,
                    "reply_keyboard": chat_log.reply_keyboard,
                    "messages": [
                        {"message": stored.message, "edited": stored.edited}
                        for stored in chat_log.messages.values()
                    ],
                }
                for chat_id, chat_log in self._chats.items()
            },
            "files": [
                {
                    "file_id": f.file_id,
                    "file_unique_id": f.file_unique_id,
                    "file_path": f.file_path,
                    "has_content": f.content is not None,
                    "url": f.url,
                    "file_name": f.file_name,
                    "mime_type": f.mime_type,
                    "width": f.width,
                    "height": f.height,
                }
                for f in self._files.values()
            ],
            "commands": [
                [scope, language, commands] for (scope, language), commands in self._commands.items()
            ],
            "charges": {charge_id: asdict(charge) for charge_id, charge in self._charges.items()},
            "invoices": [
                [chat, message, payload] for (chat, message), payload in self._invoice_payloads.items()
            ],
        }

    def _load_state(self, state_dir: Path) -> None:
        state = read_json(state_dir / "state.json")
        if state is None:
            return
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"{state_dir / 'state.json'} has an unknown format; move the folder away")
        self.version = int(state["version"])
        self._last_update_id = int(state["last_update_id"])
        self._last_file_number = int(state["last_file_number"])
        self._last_query_number = int(state["last_query_number"])
        self._users = {int(user["id"]): FakeUser(**user) for user in state["users"]}
        for chat_id, chat in state["chats"].items():
            chat_log = self._chat_log(int(chat_id))
            chat_log.last_message_id = int(chat["last_message_id"])
            chat_log.reply_keyboard = chat["reply_keyboard"]
            for item in chat["messages"]:
                message_id = int(item["message"]["message_id"])
                chat_log.messages[message_id] = _StoredMessage(item["message"], edited=bool(item["edited"]))
        for item in state["files"]:
            has_content = item.pop("has_content")
            path = state_dir / "files" / item["file_path"]
            stored = StoredFile(**item, content=path.read_bytes() if has_content else None)
            self._files[stored.file_id] = stored
            self._files_by_path[stored.file_path] = stored
        self._commands = {(scope, language): commands for scope, language, commands in state["commands"]}
        self._charges = {charge_id: _Charge(**charge) for charge_id, charge in state["charges"].items()}
        self._invoice_payloads = {(chat, message): payload for chat, message, payload in state["invoices"]}

    # ------------------------------------------------------------------------ method handlers

    async def _return_true(self, req: _Request) -> bool:
        return True

    async def _get_me(self, req: _Request) -> JsonDict:
        return {
            **self._bot_user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, req: _Request) -> list[JsonDict]:
        params = req.params
        if self._webhook is not None:
            raise _ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _int(params, "offset", 0)
        limit = min(max(_int(params, "limit", 100), 1), 100)
        timeout = max(_float(params, "timeout", 0.0), 0.0)
        if "allowed_updates" in params:
            allowed = params["allowed_updates"]
            self._allowed_updates = tuple(str(kind) for kind in allowed) if allowed else None
        if offset < 0:
            self._updates = self._updates[offset:]
        elif offset > 0:
            self._updates = [update for update in self._updates if int(update["update_id"]) >= offset]
        # The newest poll wins; an older one still waiting gets 409 like on Telegram.
        self._poll_generation += 1
        generation = self._poll_generation
        self._wake_pollers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closing:
                return []
            if generation != self._poll_generation:
                raise _ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            # Telegram drops updates of types the bot did not ask for: nothing more comes of them.
            for dropped in [u for u in self._updates if not _update_allowed(u, self._allowed_updates)]:
                self._updates.remove(dropped)
                self.mark_handled(int(dropped["update_id"]))
            if self._updates:
                return copy.deepcopy(self._updates[:limit])
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            event = self._update_event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                return []

    async def _set_webhook(self, req: _Request) -> bool:
        params = req.params
        url = _str(params, "url", "")
        if not url:
            self._webhook = None
            return True
        if not url.startswith(("http://", "https://")):
            raise _bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.match(str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        allowed = params.get("allowed_updates")
        self._webhook = WebhookConfig(
            url=url,
            secret_token=None if secret is None else str(secret),
            allowed_updates=tuple(str(kind) for kind in allowed) if allowed else None,
            max_connections=_int(params, "max_connections", 40),
        )
        self._webhook_error = None
        if _bool(params, "drop_pending_updates"):
            self._drop_pending_updates()
        self._wake_pollers()
        return True

    async def _delete_webhook(self, req: _Request) -> bool:
        self._webhook = None
        self._webhook_error = None
        if _bool(req.params, "drop_pending_updates"):
            self._drop_pending_updates()
        return True

    async def _get_webhook_info(self, req: _Request) -> JsonDict:
        webhook = self._webhook
        info: JsonDict = {
            "url": webhook.url if webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if webhook is not None:
            info["max_connections"] = webhook.max_connections
            if webhook.allowed_updates is not None:
                info["allowed_updates"] = list(webhook.allowed_updates)
            if self._webhook_error is not None:
                info["last_error_date"], info["last_error_message"] = self._webhook_error
        return info

    async def _send_message(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params)
        text, entities = _formatted(req.params, "text", "entities")
        if text is None or not text.strip():
            raise _bad_request("message text is empty")
        if _utf16_len(text) > _TEXT_LIMIT:
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

    def _media_object(self, kind: str, stored: StoredFile, params: JsonDict) -> Any:
        """The Bot API object (PhotoSize list, Document, Voice, ...) describing ``stored``."""
        if kind == "photo":
            return [_photo_size(stored, stored.width or 1280, stored.height or 1280)]
        media: JsonDict = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id}
        if kind in ("video", "animation"):
            media["width"] = _int(params, "width", stored.width or 640)
            media["height"] = _int(params, "height", stored.height or 360)
        if kind in ("video", "animation", "audio", "voice", "video_note"):
            media["duration"] = _int(params, "duration", 0)
        if kind == "video_note":
            media["length"] = _int(params, "length", 240)
        if kind == "audio":
            for key in ("performer", "title"):
                if params.get(key):
                    media[key] = str(params[key])
        if kind == "sticker":
            media.update(
                type="regular",
                width=stored.width or 512,
                height=stored.height or 512,
                is_animated=False,
                is_video=False,
            )
        if kind in ("document", "audio", "video", "animation") and stored.file_name:
            media["file_name"] = stored.file_name
        mime = stored.mime_type or _DEFAULT_MIME.get(kind)
        if kind not in ("video_note", "sticker") and mime:
            media["mime_type"] = mime
        if stored.file_size is not None:
            media["file_size"] = stored.file_size
        return media

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
        if _utf16_len(text) > _TEXT_LIMIT:
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

    async def _answer_callback_query(self, req: _Request) -> bool:
        query_id = _str(req.params, "callback_query_id", "")
        if self._open_callback_queries.pop(query_id, None) is None:
            raise _ApiError(400, _STALE_QUERY)
        text = req.params.get("text")
        if text is not None and len(str(text)) > _CALLBACK_ANSWER_LIMIT:
            raise _bad_request("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = dict(req.params)
        return True

    async def _send_chat_action(self, req: _Request) -> bool:
        _chat_id(req.params)
        if _str(req.params, "action", "") not in _CHAT_ACTIONS:
            raise _bad_request("wrong parameter action in request")
        return True

    async def _get_file(self, req: _Request) -> JsonDict:
        stored = self._files.get(_str(req.params, "file_id", ""))
        if stored is None:
            raise _bad_request("invalid file_id")
        if self._local_dir is None:
            if (stored.file_size or 0) > _DOWNLOAD_LIMIT:
                raise _bad_request("file is too big")
            return stored.to_file()
        # The local server fetches the file into its folder and names it by its own path.
        if stored.content is not None:
            target = self._local_dir / self._token / stored.file_path
            await asyncio.to_thread(_write_file, target, stored.content)
        return {**stored.to_file(), "file_path": f"{self._local_server_dir}/{self._token}/{stored.file_path}"}

    def _invoice_params(self, params: JsonDict) -> JsonDict:
        for key in ("title", "description", "payload", "currency"):
            if not params.get(key):
                raise _bad_request(f"{key} is empty")
        prices = params.get("prices")
        if not isinstance(prices, list) or not prices:
            raise _bad_request("prices are empty")
        currency = str(params["currency"])
        if currency == "XTR" and (len(prices) != 1 or params.get("provider_token")):
            # Stars invoices take exactly one price and no provider token.
            raise _bad_request("STARS_INVOICE_INVALID")
        total = sum(int(price["amount"]) for price in prices)
        if total <= 0:
            raise _bad_request("CURRENCY_TOTAL_AMOUNT_INVALID")
        return {
            "title": str(params["title"]),
            "description": str(params["description"]),
            "start_parameter": str(params.get("start_parameter") or ""),
            "currency": currency,
            "total_amount": total,
        }

    async def _send_invoice(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params)
        invoice = self._invoice_params(req.params)
        message = self._new_bot_message(chat_id, req.params, {"invoice": invoice})
        self._invoice_payloads[(chat_id, message["message_id"])] = str(req.params["payload"])
        return message

    async def _create_invoice_link(self, req: _Request) -> str:
        self._invoice_params(req.params)
        link = f"https://t.me/${secrets.token_urlsafe(12)}"
        self._invoice_links[link] = dict(req.params)
        return link

    async def _answer_pre_checkout_query(self, req: _Request) -> bool:
        query_id = _str(req.params, "pre_checkout_query_id", "")
        if query_id not in self._open_pre_checkouts:
            raise _ApiError(400, _STALE_QUERY)
        ok = _bool(req.params, "ok")
        if not ok and not req.params.get("error_message"):
            raise _bad_request("error_message is empty")
        del self._open_pre_checkouts[query_id]
        self.pre_checkout_answers[query_id] = {"ok": ok, "error_message": req.params.get("error_message")}
        return True

    async def _refund_star_payment(self, req: _Request) -> bool:
        user_id = _int(req.params, "user_id")
        charge = self._charges.get(_str(req.params, "telegram_payment_charge_id", ""))
        if charge is None or charge.user_id != user_id:
            raise _bad_request("CHARGE_NOT_FOUND")
        if charge.refunded:
            raise _bad_request("CHARGE_ALREADY_REFUNDED")
        charge.refunded = True
        return True

    def refunded(self, telegram_payment_charge_id: str) -> bool:
        """Whether the bot refunded this Stars payment."""
        charge = self._charges.get(telegram_payment_charge_id)
        return charge is not None and charge.refunded

    async def _set_my_commands(self, req: _Request) -> bool:
        commands = req.params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise _bad_request("commands must be a list of at most 100 BotCommand")
        for command in commands:
            name = str(command.get("command", "")) if isinstance(command, dict) else ""
            description = str(command.get("description", "")) if isinstance(command, dict) else ""
            if not _COMMAND_RE.match(name) or not 1 <= len(description) <= 256:
                raise _bad_request("BOT_COMMAND_INVALID")
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        self._commands[key] = [{"command": c["command"], "description": c["description"]} for c in commands]
        return True

    async def _delete_my_commands(self, req: _Request) -> bool:
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        self._commands.pop(key, None)
        return True

    async def _get_my_commands(self, req: _Request) -> list[JsonDict]:
        key = _commands_key(req.params.get("scope"), _str(req.params, "language_code", ""))
        return copy.deepcopy(self._commands.get(key, []))

    async def _set_chat_menu_button(self, req: _Request) -> bool:
        chat_id = _chat_id(req.params) if req.params.get("chat_id") is not None else None
        button = req.params.get("menu_button")
        if button is None:
            self._menu_buttons.pop(chat_id, None)
        elif isinstance(button, dict) and button.get("type") in ("commands", "web_app", "default"):
            self._menu_buttons[chat_id] = button
        else:
            raise _bad_request("can't parse menu button")
        return True

    async def _get_chat_menu_button(self, req: _Request) -> JsonDict:
        chat_id = _chat_id(req.params) if req.params.get("chat_id") is not None else None
        return copy.deepcopy(
            self._menu_buttons.get(chat_id) or self._menu_buttons.get(None) or {"type": "default"}
        )

    async def _get_chat(self, req: _Request) -> JsonDict:
        chat = self._chat_dict(_chat_id(req.params))
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": True,
                "limited_gifts": True,
                "unique_gifts": True,
                "premium_subscription": True,
                "gifts_from_channels": True,
            },
        }


# ------------------------------------------------------------------------- request parsing


async def _read_request(request: web.Request) -> tuple[JsonDict, dict[str, _Upload]]:
    """Parameters from the query string and a JSON, urlencoded or multipart body."""
    raw: JsonDict = {key: _decode_form_value(key, value) for key, value in request.query.items()}
    uploads: dict[str, _Upload] = {}
    if request.method == "POST" and request.can_read_body:
        content_type = request.content_type
        if content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _bad_request("can't parse JSON encoded request") from None
            if not isinstance(body, dict):
                raise _bad_request("JSON object expected")
            raw.update(body)
        elif content_type.startswith("multipart/"):
            fields, uploads = await _read_multipart(await request.multipart())
            raw.update({key: _decode_form_value(key, value) for key, value in fields.items()})
        elif content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            raw.update(
                {key: _decode_form_value(key, value) for key, value in form.items() if isinstance(value, str)}
            )
    return _decode_json_fields(raw), uploads


async def _read_multipart(reader: aiohttp.MultipartReader) -> tuple[dict[str, str], dict[str, _Upload]]:
    fields: dict[str, str] = {}
    uploads: dict[str, _Upload] = {}
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            continue
        data = bytes(await part.read(decode=True))
        if part.filename is not None:
            uploads[part.name] = _Upload(part.filename, part.headers.get(aiohttp.hdrs.CONTENT_TYPE), data)
        else:
            fields[part.name] = data.decode(part.get_charset(default="utf-8"))
    return fields, uploads


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _decode_form_value(key: str, value: str) -> Any:
    """Form values are strings; numbers, booleans and objects arrive JSON-encoded (as aiogram sends them)."""
    if key in _STRING_FIELDS or value.startswith("attach://"):
        return value
    try:
        decoded = json.loads(value, parse_constant=_reject_constant)
    except ValueError:
        return value
    # A JSON string literal was not meant as JSON: keep the text exactly as sent.
    return value if isinstance(decoded, str) else decoded


def _decode_json_fields(params: JsonDict) -> JsonDict:
    for key in _JSON_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str):
            try:
                params[key] = json.loads(value)
            except ValueError:
                raise _bad_request(f"can't parse {key} JSON object") from None
    return params


def _int(params: JsonDict, name: str, default: int | None = None) -> int:
    value = params.get(name)
    if value is None or value == "":
        if default is None:
            raise _bad_request(f"{name} is empty")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid {name} specified") from None


def _float(params: JsonDict, name: str, default: float) -> float:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid {name} specified") from None


def _str(params: JsonDict, name: str, default: str) -> str:
    value = params.get(name)
    return default if value is None else str(value)


def _bool(params: JsonDict, name: str) -> bool:
    value = params.get(name)
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _chat_id(params: JsonDict) -> int:
    value = params.get("chat_id")
    if value is None or value == "":
        raise _bad_request("chat_id is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        # "@channelusername" chats are not modelled.
        raise _bad_request("chat not found") from None


def _formatted(
    params: JsonDict, text_key: str, entities_key: str
) -> tuple[str | None, list[JsonDict] | None]:
    """Text and entities the way Telegram stores them: explicit entities win over parse_mode, and
    the /commands in the text become bot_command entities, as Telegram finds them by itself."""
    raw = params.get(text_key)
    if raw is None:
        return None, None
    text = str(raw)
    entities = params.get(entities_key)
    if isinstance(entities, list):
        return text, _with_commands(text, entities) or None
    if str(params.get("parse_mode") or "").lower() == "html":
        try:
            plain, parsed = parse_html(text)
        except ValueError as exc:
            raise _bad_request(f"can't parse entities: {exc}") from None
        return plain, _with_commands(plain, parsed) or None
    # Markdown and MarkdownV2 are passed through unparsed.
    return text, _with_commands(text, []) or None


# "/balance" or "/start@aisha_bot", not part of a word, a path ("a/b", "/tmp/x") or a link.
_COMMAND_IN_TEXT_RE = re.compile(r"(?<![\w/@.])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w/@])")
# Telegram finds no command inside these.
_NO_COMMANDS_IN = frozenset({"code", "pre", "url", "text_link", "email"})


def _position(entity: JsonDict) -> tuple[int, int]:
    """Sort key: by offset, the outer (longer) entity first; a malformed entity goes first."""
    offset, length = entity.get("offset"), entity.get("length")
    return (offset if isinstance(offset, int) else 0, -length if isinstance(length, int) else 0)


def _with_commands(text: str, entities: list[JsonDict]) -> list[JsonDict]:
    """``entities`` plus a bot_command entity for every /command outside code and links."""
    if not all(isinstance(entity, dict) for entity in entities):
        return entities  # not Telegram's shape: left as sent
    taken = [
        (entity["offset"], entity["offset"] + entity["length"])
        for entity in entities
        if entity.get("type") in _NO_COMMANDS_IN
        and isinstance(entity.get("offset"), int)
        and isinstance(entity.get("length"), int)
    ]
    commands = []
    for match in _COMMAND_IN_TEXT_RE.finditer(text):
        offset = _utf16_len(text[: match.start()])
        length = _utf16_len(match[0])
        if not any(start < offset + length and offset < end for start, end in taken):
            commands.append({"type": "bot_command", "offset": offset, "length": length})
    if not commands:
        return entities
    return sorted([*entities, *commands], key=_position)


def _caption_content(params: JsonDict) -> JsonDict:
    caption, entities = _formatted(params, "caption", "caption_entities")
    if not caption:
        return {}
    if _utf16_len(caption) > _CAPTION_LIMIT:
        raise _bad_request("message caption is too long")
    content: JsonDict = {"caption": caption}
    if entities:
        content["caption_entities"] = entities
    return content


def _reply_markup(params: JsonDict) -> JsonDict | None:
    markup = params.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _bad_request("object expected as reply markup")
    if "keyboard" in markup:
        _check_reply_keyboard(markup)
    elif "inline_keyboard" in markup:
        _check_inline_keyboard(markup)
    return markup


def _inline_markup(params: JsonDict) -> JsonDict | None:
    markup = _reply_markup(params)
    return markup if markup is not None and "inline_keyboard" in markup else None


def _keyboard_rows(markup: JsonDict, field_name: str, error: str) -> list[list[Any]]:
    rows = markup[field_name]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request(error)
    if sum(len(row) for row in rows) > _KEYBOARD_BUTTON_LIMIT:
        raise _bad_request("reply markup is too long")
    return rows


def _check_reply_keyboard(markup: JsonDict) -> None:
    rows = _keyboard_rows(markup, "keyboard", 'field "keyboard" must be an Array of Arrays')
    for row in rows:
        for button in row:
            if isinstance(button, dict):
                text = button.get("text")
                if not isinstance(text, str):
                    raise _bad_request('can\'t parse keyboard button: Field "text" must be of type String')
            elif isinstance(button, str):
                text = button
            else:
                raise _bad_request(
                    "can't parse keyboard button: KeyboardButton must be a String or an Object"
                )
            if not text:
                raise _bad_request("keyboard button text must be non-empty")


def _check_inline_keyboard(markup: JsonDict) -> None:
    rows = _keyboard_rows(
        markup,
        "inline_keyboard",
        'field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays',
    )
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise _bad_request(
                    "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
                )
            text = button.get("text")
            if not isinstance(text, str):
                raise _bad_request('can\'t parse inline keyboard button: Field "text" must be of type String')
            # The Bot API takes an empty url or callback_data for a missing one.
            actions = [key for key in _BUTTON_ACTIONS & button.keys() if button[key] not in ("", None)]
            if not actions:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            if len(actions) > 1:
                # The Bot API documents "exactly one of the optional fields"; the server would
                # silently use one of them and drop the rest.
                raise _bad_request(
                    "can't parse inline keyboard button: exactly one of the optional fields must be used, "
                    f"found {', '.join(sorted(actions))}"
                )
            if not text:
                raise _bad_request("inline keyboard button text must be non-empty")
            data = button.get("callback_data")
            if data is not None and len(str(data).encode()) > _CALLBACK_DATA_LIMIT:
                raise _bad_request("BUTTON_DATA_INVALID")


def _commands_key(scope: Any, language_code: str) -> tuple[str, str]:
    scope_dict = scope if isinstance(scope, dict) and scope else {"type": "default"}
    return json.dumps(scope_dict, sort_keys=True), language_code


def _update_allowed(update: JsonDict, allowed: tuple[str, ...] | None) -> bool:
    kind = next((key for key in update if key != "update_id"), "")
    if allowed:
        return kind in allowed
    return kind not in _OPT_IN_UPDATES


def _api_message(message: JsonDict) -> JsonDict:
    """A stored message without the fake's own bookkeeping keys."""
    result = copy.deepcopy(message)
    result.pop("edited", None)
    return result


def _photo_size(stored: StoredFile, width: int, height: int) -> JsonDict:
    size: JsonDict = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "width": width,
        "height": height,
    }
    if stored.file_size is not None:
        size["file_size"] = stored.file_size
    return size


def _short_params(params: JsonDict) -> str:
    text = json.dumps(params, ensure_ascii=False, default=str)
    return text if len(text) <= 600 else text[:600] + "..."


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _utf16_len(text: str) -> int:
    # Telegram measures entity offsets and lengths in UTF-16 code units.
    return len(text.encode("utf-16-le")) // 2


# ---------------------------------------------------------------------------- image headers

_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from a PNG, JPEG, GIF or WebP header; None if unknown.

    Only the header is read, so this needs no image library.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(
                data[28:30], "little"
            ) & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 4 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            index += 2
            continue
        length = int.from_bytes(data[index + 2 : index + 4], "big")
        if marker in _JPEG_SOF:
            if index + 9 > len(data):
                return None
            height = int.from_bytes(data[index + 5 : index + 7], "big")
            width = int.from_bytes(data[index + 7 : index + 9], "big")
            return width, height
        index += 2 + length
    return None


# ------------------------------------------------------------------------------ HTML entities

# Telegram's HTML parse mode, ported from TDLib's ``parse_html`` (td/telegram/MessageEntity.cpp),
# which the Bot API server runs: the same tags, the same character references, and the same error
# texts with the same byte offsets. A bare ``&`` or ``>`` is kept as it is; a ``<`` is always the
# start of a tag, so unescaped user text with a ``<`` in it is refused, as in production.
_HTML_TAG_NAMES = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "tg-time",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
_HTML_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "code": "code",
    "blockquote": "blockquote",
}
_NAMED_REFS = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"'}
_HTML_SPACES = frozenset(b" \t\r\n\v\0")


@dataclass(slots=True)
class _OpenTag:
    name: str
    argument: str
    offset: int  # UTF-16 offset of the tag's text
    text_start: int  # index in the output where the tag's text starts


def _html_space(byte: int) -> bool:
    return byte in _HTML_SPACES


def _html_alpha(byte: int) -> bool:
    return 0x61 <= (byte | 0x20) <= 0x7A


def _html_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _decode_html_entity(data: bytes, pos: int) -> tuple[int, int]:
    """The code point of the character reference at ``data[pos] == '&'`` and the index after it;
    code 0 when it is none (then the ``&`` is kept as text)."""
    at = _byte_at(data)
    end = pos + 1
    code = 0
    if at(end) == 0x23:  # '#'
        end += 1
        if at(end) == 0x78:  # 'x'
            end += 1
            while at(end) and chr(at(end)) in "0123456789abcdefABCDEF":
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while _html_digit(at(end)):
                code = code * 10 + at(end) - 0x30
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while _html_alpha(at(end)):
            end += 1
        name = _NAMED_REFS.get(data[pos + 1 : end])
        if name is None:
            return 0, pos
        code = ord(name)
    return code, end + 1 if at(end) == 0x3B else end  # ';' is optional


def _byte_at(data: bytes) -> Callable[[int], int]:
    size = len(data)
    return lambda index: data[index] if index < size else 0


def parse_html(source: str) -> tuple[str, list[JsonDict]]:
    """Telegram's HTML parse mode: plain text plus MessageEntity dicts (UTF-16 offsets).

    Raises ValueError with Telegram's own message (unsupported or unclosed tags, mismatched end
    tags, a ``<`` that starts no tag) so bots that forget to escape user input fail here as they
    would in production.
    """
    data = source.encode("utf-8", "surrogatepass")
    at = _byte_at(data)
    out = bytearray()
    utf16 = 0
    stack: list[_OpenTag] = []
    entities: list[JsonDict] = []
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x26:  # '&'
            code, after = _decode_html_entity(data, i)
            if code:
                out += chr(code).encode("utf-8", "surrogatepass")
                utf16 += 2 if code > 0xFFFF else 1
                i = after
                continue
        if c != 0x3C:  # '<'
            if c & 0xC0 != 0x80:  # the first byte of a character
                utf16 += 2 if c >= 0xF0 else 1
            out.append(c)
            i += 1
            continue
        begin = i
        i += 1
        if at(i) != 0x2F:  # a start tag
            while not _html_space(at(i)) and at(i) != 0x3E:
                i += 1
            if at(i) == 0:
                raise ValueError(f"Unclosed start tag at byte offset {begin}")
            name = data[begin + 1 : i].decode("utf-8", "replace").lower()
            if name not in _HTML_TAG_NAMES:
                raise ValueError(f'Unsupported start tag "{name}" at byte offset {begin}')
            argument, i = _html_attributes(data, i, name, begin)
            if name == "span" and argument != "spoiler":
                raise ValueError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
            stack.append(_OpenTag(name, argument, utf16, len(out)))
            i += 1  # '>'
            continue
        # an end tag
        if not stack:
            raise ValueError(f"Unexpected end tag at byte offset {begin}")
        while not _html_space(at(i)) and at(i) != 0x3E:
            i += 1
        end_name = data[begin + 2 : i].decode("utf-8", "replace").lower()
        while _html_space(at(i)) and at(i) != 0:
            i += 1
        if at(i) != 0x3E:
            raise ValueError(f"Unclosed end tag at byte offset {begin}")
        i += 1
        tag = stack.pop()
        if end_name and end_name != tag.name:
            raise ValueError(
                f'Unmatched end tag at byte offset {begin}, expected "</{tag.name}>", found "</{end_name}>"'
            )
        if utf16 > tag.offset:
            _close_html_tag(tag, utf16 - tag.offset, bytes(out[tag.text_start :]), entities)
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    for entity in entities:
        if entity["type"] == "code":
            entity.pop("language", None)
    entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
    return out.decode("utf-8", "surrogatepass"), entities


def _html_attributes(data: bytes, i: int, tag: str, begin: int) -> tuple[str, int]:
    """Read a start tag's attributes from ``i`` up to its ``>``; return the tag's argument (the
    link, the language, the spoiler class, ...) and the index of the ``>``."""
    at = _byte_at(data)
    argument = ""
    while at(i) != 0x3E:
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) == 0x3E:
            break
        name_begin = i
        while not _html_space(at(i)) and at(i) not in b"=>/\"'":
            i += 1
        attribute = data[name_begin:i].decode("utf-8", "replace")
        if not attribute:
            raise ValueError(f'Empty attribute name in the tag "{tag}" at byte offset {begin}')
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) != 0x3D:  # '='
            if at(i) == 0:
                raise ValueError(f'Unclosed start tag "{tag}" at byte offset {begin}')
            if tag == "blockquote" and attribute == "expandable":
                argument = "1"
            continue
        i += 1
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) == 0:
            raise ValueError(f'Unclosed start tag "{tag}" at byte offset {begin}')
        if at(i) not in b"\"'":
            token_begin = i
            while _html_alpha(at(i)) or _html_digit(at(i)) or at(i) in b".-":
                i += 1
            value = data[token_begin:i].decode().lower()
            if not _html_space(at(i)) and at(i) != 0x3E:
                raise ValueError(f"Unexpected end of name token at byte offset {token_begin}")
        else:
            quote = at(i)
            i += 1
            raw = bytearray()
            while at(i) != quote and at(i) != 0:
                if at(i) == 0x26:
                    code, after = _decode_html_entity(data, i)
                    if code:
                        raw += chr(code).encode("utf-8", "surrogatepass")
                        i = after
                        continue
                raw.append(at(i))
                i += 1
            if at(i) == quote:
                i += 1
            value = raw.decode("utf-8", "surrogatepass")
        if at(i) == 0:
            raise ValueError(f"Unclosed start tag at byte offset {begin}")
        if tag == "a" and attribute == "href":
            argument = value
        elif tag == "code" and attribute == "class" and value.startswith("language-"):
            argument = value.removeprefix("language-")
        elif tag == "span" and attribute == "class" and value.startswith("tg-"):
            argument = value.removeprefix("tg-")
        elif (tag == "tg-emoji" and attribute == "emoji-id") or (
            tag == "blockquote" and attribute == "expandable"
        ):
            argument = value or "1"
    return argument, i


def _close_html_tag(tag: _OpenTag, length: int, text: bytes, entities: list[JsonDict]) -> None:
    entity: JsonDict = {"type": _HTML_ENTITY_TYPES.get(tag.name, ""), "offset": tag.offset, "length": length}
    last = entities[-1] if entities else None
    same_span = last is not None and (last["offset"], last["length"]) == (tag.offset, length)
    if tag.name == "tg-emoji":
        if not tag.argument.isdigit() or int(tag.argument) == 0:
            raise ValueError("Invalid custom emoji identifier specified")
        entity.update(type="custom_emoji", custom_emoji_id=tag.argument)
    elif tag.name == "tg-time":
        return  # a formatted date: not modelled
    elif tag.name == "a":
        url = tag.argument or text.decode("utf-8", "surrogatepass")
        if not url.strip():
            return  # Telegram keeps the text and drops a link it can't use
        entity.update(type="text_link", url=url)
    elif tag.name == "blockquote" and tag.argument:
        entity["type"] = "expandable_blockquote"
    elif tag.name == "pre":
        if same_span and last is not None and last["type"] == "code" and last.get("language"):
            last["type"] = "pre"  # <pre><code class="language-x"> is one pre entity with a language
            return
        entity["type"] = "pre"
    elif tag.name == "code":
        if same_span and last is not None and last["type"] == "pre" and tag.argument:
            last["language"] = tag.argument
            return
        if tag.argument:
            entity["language"] = tag.argument
    entities.append(entity)
