"""Reading Telegram updates that might be odd: too deep to parse, or with an id we can't store.

Telegram retries a webhook update until it gets a 2xx, and aiogram's polling asks for the same
offset again after a response it can't read: one odd update would be delivered forever and hold
up every update behind it. Whatever can't be handled is logged with its id and passed over.
"""

from __future__ import annotations

import re
from typing import Any, cast

import structlog
from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import ClientDecodeError
from aiogram.methods import GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Update
from pydantic import ValidationError

# processed_updates.update_id is a BIGINT; Telegram's ids are far smaller, but take any that fits.
UPDATE_ID_RANGE = range(-(2**63), 2**63)

log = structlog.get_logger(__name__)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_NUMBER_AFTER_COLON = re.compile(r"\s*:\s*(-?\d{1,40})")


class UnreadableUpdate(Exception):
    """The body is no Update we can read; `update_id` is its id when that could be found."""

    def __init__(self, reason: str, update_id: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.update_id = update_id


def parse_update(raw: bytes | str, bot: Bot) -> Update:
    """One update from JSON. pydantic's parser stops at a nesting depth far beyond any real update
    (Telegram nests a reply only one level) without touching Python's recursion limit."""
    try:
        update = Update.model_validate_json(raw, context={"bot": bot})
    except ValidationError as exc:
        error_type = exc.errors()[0]["type"] if exc.error_count() else "invalid"
        raise UnreadableUpdate(error_type, find_update_id(raw, depth=1)) from None
    if update.update_id not in UPDATE_ID_RANGE:
        raise UnreadableUpdate("update_id_out_of_range", update.update_id)
    return update


def find_update_id(raw: bytes | str, *, depth: int) -> int | None:
    """The first `"update_id": N` found at nesting `depth` (1: a bare update; 3: the first update
    of a getUpdates response), without parsing the rest: the JSON may be too deep to parse."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    level = 0
    for token in _TOKEN.finditer(text):
        value = token.group()
        if value in "{[":
            level += 1
        elif value in "}]":
            level -= 1
        elif level == depth and value == '"update_id"':
            number = _NUMBER_AFTER_COLON.match(text, token.end())
            if number is not None:
                return int(number.group(1))
    return None


class SkipUnreadableUpdatesMiddleware(BaseRequestMiddleware):
    """Polling's side: a getUpdates response that can't be read is asked for again one update at a
    time; when the first update alone can't be read, it is logged and confirmed (the next offset
    passes it), so polling moves on instead of asking for the same response forever."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except ClientDecodeError as error:
            if not isinstance(method, GetUpdates):
                raise
            first_error = error
        if method.limit != 1:
            # The readable updates ahead of the odd one still arrive, one per call.
            single = method.model_copy(update={"limit": 1, "timeout": 0})
            try:
                return await make_request(bot, cast(TelegramMethod[TelegramType], single))
            except ClientDecodeError as error:
                first_error = error
        update_id = _first_update_id(first_error.data)
        if update_id is None:
            raise first_error
        log.error("polling.update_skipped", update_id=update_id, reason=type(first_error.original).__name__)
        method.offset = update_id + 1
        # Despite the annotation, a request middleware passes on the result itself (see
        # AiohttpSession.make_request): no updates this time, the next call starts past it.
        return cast(Response[TelegramType], [])


def _first_update_id(data: Any) -> int | None:
    """The id of the first update in a getUpdates response: raw text, or JSON parsed but refused."""
    if isinstance(data, str | bytes):
        return find_update_id(data, depth=3)
    try:
        update_id = data["result"][0]["update_id"]
    except (KeyError, IndexError, TypeError):
        return None
    return update_id if isinstance(update_id, int) else None
