"""POST /telegram/webhook: Telegram's updates, accepted only with our secret header."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import structlog
from aiogram.types import Update
from fastapi import APIRouter, Header, HTTPException, Request, status
from pydantic import ValidationError

from aisha.api.deps import RuntimeDep

router = APIRouter()
log = structlog.get_logger(__name__)


def secret_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so the secret can't be guessed byte by byte from timings."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


@router.post("/telegram/webhook", include_in_schema=False)
async def telegram_webhook(
    request: Request,
    runtime: RuntimeDep,
    secret: Annotated[str | None, Header(alias="X-Telegram-Bot-Api-Secret-Token")] = None,
) -> dict[str, Any]:
    expected = runtime.settings.webhook_secret
    if expected is None or not secret_matches(expected.get_secret_value(), secret):
        log.warning("webhook.telegram.bad_secret", client=request.client.host if request.client else None)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad secret token")
    try:
        update = Update.model_validate(await request.json(), context={"bot": runtime.bot})
    except (ValueError, ValidationError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a Telegram update") from None
    # Handled before answering: an error becomes a 500 and Telegram delivers the update again,
    # which the dispatcher's exactly-once guard makes safe.
    await runtime.dispatcher.feed_update(runtime.bot, update)
    return {"ok": True}
