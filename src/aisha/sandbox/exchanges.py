"""What the bot sent a fake FAL or OpenAI server and what it answered, for the operator panel.

Only bodies are kept, never headers (the Authorization header carries the key); long strings are
cut (a photo sent as a data URL is megabytes) and files are named by type and size, so a long
sandbox session stays small.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

KEEP = 200  # exchanges remembered per fake; the panel lists the newest 100
STRING_CHARS = 600
LIST_ITEMS = 30


@dataclass
class Exchange:
    number: int  # 1, 2, 3… per fake: how the panel asks for one
    at: float  # time.time()
    method: str
    path: str  # with the query: FAL's fal_webhook is part of the request
    summary: str = ""
    request: Any = None  # JSON as sent (shortened), a note on a file, or None for no body
    status: int | None = None  # None: not answered (yet, or a fault that never answers)
    response: Any = None

    def answered(self, response: web.StreamResponse) -> None:
        self.status = response.status
        self.response = response_body(response)


# A plain key: aiohttp's typed web.RequestKey is newer than the aiohttp that aiogram's floor admits.
EXCHANGE = "aisha.exchange"


class ExchangeLog:
    """The newest exchanges of one fake server, numbered in order."""

    def __init__(self, keep: int = KEEP) -> None:
        self._items: deque[Exchange] = deque(maxlen=keep)
        self._count = 0

    def add(self, method: str, path: str, *, summary: str = "", request: Any = None) -> Exchange:
        self._count += 1
        exchange = Exchange(self._count, time.time(), method, path, summary, request)
        self._items.append(exchange)
        return exchange

    def add_request(self, request: web.Request, *, summary: str = "") -> Exchange:
        """Records ``request``; a handler finds it as ``request[EXCHANGE]`` to add what it read."""
        exchange = self.add(request.method, request.path_qs, summary=summary, request=request_body(request))
        request[EXCHANGE] = exchange
        return exchange

    def recent(self, limit: int) -> list[Exchange]:
        return list(self._items)[-limit:]

    def get(self, number: int) -> Exchange | None:
        return next((exchange for exchange in self._items if exchange.number == number), None)


def request_body(request: web.Request) -> str | None:
    """The body by its type and size, until the handler that parses it calls `note_request`: read
    here, a body over the server's limit or a multipart stream would not reach the handler whole."""
    if not request.body_exists:
        return None
    return file_note(request.content_type, request.content_length)


def note_request(request: web.Request, body: Any) -> None:
    """What the handler read from the request (JSON, form fields), shortened, for the panel."""
    exchange: Exchange | None = request.get(EXCHANGE)
    if exchange is not None:
        exchange.request = shorten(body)


def response_body(response: web.StreamResponse) -> Any:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return file_note(response.content_type, response.content_length)
    if response.content_type == "application/json":
        try:
            return shorten(json.loads(body))
        except ValueError:
            pass
    if response.content_type.startswith("text/"):
        return shorten(body.decode(response.charset or "utf-8", "replace"))
    return file_note(response.content_type, len(body))


def file_note(content_type: str, size: int | None) -> str:
    return f"{content_type}, {size} bytes" if size is not None else content_type


def shorten(value: Any) -> Any:
    """``value`` with every long string cut and every long list cut, saying how long it was."""
    if isinstance(value, str):
        if len(value) <= STRING_CHARS:
            return value
        return f"{value[:STRING_CHARS]}… ({len(value)} characters)"
    if isinstance(value, dict):
        return {key: shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [shorten(item) for item in value[:LIST_ITEMS]]
        if len(value) > LIST_ITEMS:
            items.append(f"… ({len(value)} items)")
        return items
    return value
