"""What the fake Telegram server stores and records, and its error answers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aisha.sandbox.telegram.constants import JsonDict


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


def _short_params(params: JsonDict) -> str:
    text = json.dumps(params, ensure_ascii=False, default=str)
    return text if len(text) <= 600 else text[:600] + "..."
