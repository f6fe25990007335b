"""The HTTP session the Bot uses for Bot API calls: aiogram's, with less work per call.

- A call without a file goes as one JSON body (the Bot API takes `application/json` for any
  method), not as a form whose every nested value is JSON-encoded on its own and then
  percent-encoded; a call with a file is a multipart form, as aiogram builds it.
- A successful answer is read by pydantic straight from its JSON text into the method's result
  type; anything else (an error, an answer that doesn't read) goes through aiogram's own checks,
  which raise what they always raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiohttp import FormData
from aiohttp.payload import JsonPayload
from pydantic import ValidationError

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import InputFile


class BotApiSession(AiohttpSession):
    def build_form_data(  # type: ignore[override]  # aiohttp takes either as a request's data
        self, bot: Bot, method: TelegramMethod[TelegramType]
    ) -> FormData | JsonPayload:
        files: dict[str, InputFile] = {}
        body: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":  # what aiogram's form leaves out
                body[key] = prepared
        if files:
            return super().build_form_data(bot, method)
        return JsonPayload(body, dumps=self.json_dumps)

    def check_response(
        self, bot: Bot, method: TelegramMethod[TelegramType], status_code: int, content: str
    ) -> Response[TelegramType]:
        if 200 <= status_code <= 226:
            response_type = Response[method.__returning__]  # type: ignore[name-defined]
            try:
                response: Response[TelegramType] = response_type.model_validate_json(
                    content, context={"bot": bot}
                )
            except ValidationError:
                pass  # aiogram's checks below say what is wrong with it
            else:
                if response.ok:
                    return response
        return super().check_response(bot, method, status_code, content)
