"""The fake Telegram server's stored conversation and its persistence."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import aiohttp

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox._state import read_json, write_json_atomically
from aisha.sandbox.faults import FaultPlan
from aisha.sandbox.telegram.constants import _STATE_FORMAT, JsonDict
from aisha.sandbox.telegram.models import (
    FakeUser,
    RecordedCall,
    StoredFile,
    WebhookConfig,
    _Charge,
    _ChatLog,
    _ExpectedRefusal,
    _Failure,
    _Handler,
    _StoredMessage,
)
from aisha.sandbox.telegram.params import _commands_key


class ChatState(LoopbackServer):
    """The stored conversation: users, chats and their messages, commands, charges; saved on every
    change when given a folder."""

    def __init__(
        self,
        token: str,
        *,
        bot_username: str,
        bot_first_name: str,
        host: str,
        port: int,
        state_dir: Path | None,
        keep_calls: int | None,
        local_dir: Path | None,
        local_server_dir: str | None,
    ) -> None:
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
        self._init_conversation(state_dir)
        # Filled by the facade once every method handler exists.
        self._handlers: dict[str, tuple[str, _Handler]] = {}

    def _init_conversation(self, state_dir: Path | None) -> None:
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

    def refunded(self, telegram_payment_charge_id: str) -> bool:
        """Whether the bot refunded this Stars payment."""
        charge = self._charges.get(telegram_payment_charge_id)
        return charge is not None and charge.refunded

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
