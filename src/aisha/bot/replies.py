"""Replies that tell about money moved: sent once the update's transaction has committed, so a
reply that fails (the chat blocked the bot, Telegram timed out) can't undo what it tells."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.db.session import after_commit

log = structlog.get_logger(__name__)


def reply_after_commit(session: AsyncSession, send: Callable[[], Awaitable[object]]) -> None:
    async def run() -> None:
        try:
            await send()
        except Exception:  # the work is committed; only the reply is lost
            log.warning("reply.failed_after_commit", exc_info=True)

    after_commit(session, run)
