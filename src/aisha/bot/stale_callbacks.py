"""A button press answered too late is not the handler's failure.

Telegram refuses answerCallbackQuery once the query is about 15 s old (or was already answered):
the spinner on the user's button has gone by itself, and whatever the handler does next (change
a setting, send the reply) must still happen rather than the whole update being rolled back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import structlog
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramBadRequest
from aiogram.methods import AnswerCallbackQuery, Response, TelegramMethod
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from aiogram import Bot

log = structlog.get_logger(__name__)
_STALE = ("query is too old", "query id is invalid")


class StaleCallbackAnswerMiddleware(BaseRequestMiddleware):
    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except TelegramBadRequest as error:
            if not isinstance(method, AnswerCallbackQuery) or not any(
                stale in error.message.lower() for stale in _STALE
            ):
                raise
            log.info("telegram.callback_answer_too_late", callback_query_id=method.callback_query_id)
            # Despite the annotation, a request middleware passes on the result itself (see
            # AiohttpSession.make_request): answerCallbackQuery's is True.
            return cast(Response[TelegramType], True)
