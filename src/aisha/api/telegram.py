"""POST /telegram/webhook: Telegram's updates, accepted only with our secret header.

Telegram delivers an update again and again until it gets a 2xx, holding up the updates behind
it. So once the secret matches, every update gets a 200: one we can't read or whose handling
fails is logged with its id and passed over, never answered with a 4xx or 5xx.
"""

from __future__ import annotations

import hmac
from http import HTTPStatus

import structlog
from aiohttp import web

from aisha.api import TELEGRAM_WEBHOOK_PATH
from aisha.api.body import BodyIncomplete, BodyTooLarge, read_capped
from aisha.api.deps import refusal, rules_of, runtime_of
from aisha.bot.updates import UnreadableUpdate, parse_update

# Far above any real update (texts are at most 4096 characters, files are sent as ids).
MAX_UPDATE_BYTES = 1024 * 1024

log = structlog.get_logger(__name__)


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so the secret can't be guessed byte by byte from timings."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


async def telegram_webhook(request: web.Request) -> web.Response:
    expected = rules_of(request).webhook_secret
    if expected is None or not secret_matches(
        expected, request.headers.get("X-Telegram-Bot-Api-Secret-Token")
    ):
        log.warning("webhook.telegram.bad_secret", client=request.remote)
        return refusal(HTTPStatus.UNAUTHORIZED, "bad secret token")
    runtime = runtime_of(request)
    try:
        update = parse_update(await read_capped(request, MAX_UPDATE_BYTES), runtime.bot)
    except BodyTooLarge:
        log.error("webhook.telegram.update_skipped", reason="too_large", limit=MAX_UPDATE_BYTES)
        return web.json_response({"ok": False})
    except UnreadableUpdate as exc:
        log.error("webhook.telegram.update_skipped", reason=exc.reason, update_id=exc.update_id)
        return web.json_response({"ok": False})
    except BodyIncomplete:  # gone before its body was complete: it will be sent again
        return refusal(HTTPStatus.BAD_REQUEST, "incomplete body")
    # Handled before answering, so a 200 means its transaction committed (the dispatcher's
    # exactly-once guard drops a repeat).
    try:
        await runtime.dispatcher.feed_update(runtime.bot, update)
    except Exception as exc:
        log.exception("webhook.telegram.update_failed", update_id=update.update_id, error=type(exc).__name__)
        return web.json_response({"ok": False})
    return web.json_response({"ok": True})


routes = [web.post(TELEGRAM_WEBHOOK_PATH, telegram_webhook)]
