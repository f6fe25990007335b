"""The outermost of our update middlewares: counts and times every update, counts its errors, and
puts its update id and user id on every log line written while it is handled."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiogram import BaseMiddleware
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import TelegramObject, Update
from aiogram.types import User as TelegramUser
from aiogram.types.update import UpdateTypeLookupError

from aisha.metrics import Metrics, Outcome

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]
# Set by UnitOfWorkMiddleware when it drops an update that was already handled.
DUPLICATE_KEY = "duplicate_update"


class ObserveUpdateMiddleware(BaseMiddleware):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        tg_user: TelegramUser | None = data.get("event_from_user")
        update_type = _update_type(event)
        outcome = Outcome.ERROR
        started = time.perf_counter()
        # Bound in contextvars (and unbound after), so lines from any logger, ours or a library's,
        # carry them; tasks started while handling inherit them.
        with structlog.contextvars.bound_contextvars(
            update_id=event.update_id, user_id=tg_user.id if tg_user else None
        ):
            try:
                result = await handler(event, data)
            except Exception as exc:
                self._metrics.count_error(exc)
                raise
            else:
                if data.get(DUPLICATE_KEY):
                    outcome = Outcome.DUPLICATE
                elif result is UNHANDLED:
                    outcome = Outcome.UNHANDLED
                else:
                    outcome = Outcome.HANDLED
                return result
            finally:
                self._metrics.observe_update(update_type, outcome, time.perf_counter() - started)


def _update_type(update: Update) -> str:
    try:
        return update.event_type
    except UpdateTypeLookupError:  # an update type newer than this aiogram: still counted
        return "unknown"
