"""A fake Telegram Bot API server, split by concern: constants and models, request parsing, the
HTML parse mode, and the server in layers (stored state, files, calls, updates, methods) under
the :class:`FakeTelegramServer` facade."""

from aisha.sandbox.telegram.html import parse_html
from aisha.sandbox.telegram.images import image_size
from aisha.sandbox.telegram.models import FakeUser, RecordedCall, RefusedCall, StoredFile, WebhookConfig
from aisha.sandbox.telegram.server import FakeTelegramServer

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
