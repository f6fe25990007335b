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

Split by concern into the modules of this package.
"""

from aisha.sandbox.telegram.images import image_size
from aisha.sandbox.telegram.models import FakeUser, RecordedCall, RefusedCall, StoredFile, WebhookConfig
from aisha.sandbox.telegram.server import FakeTelegramServer
from aisha.telegram_html import parse_html

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
