"""Bot API calls through BotApiSession (JSON bodies) reach Telegram with the parameters aiogram's
form would have sent, come back as the same objects, and fail as they failed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import BufferedInputFile, KeyboardButton, ReplyKeyboardMarkup

from aisha.bot.api_session import BotApiSession
from aisha.sandbox import FakeTelegramServer, FakeUser

USER = FakeUser(id=4243, first_name="Bea")


@pytest.fixture
async def server() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as fake:
        yield fake


def _bot(server: FakeTelegramServer, session: AiohttpSession) -> Bot:
    return Bot(server.token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))


async def test_json_calls_send_and_read_what_the_form_did(server: FakeTelegramServer) -> None:
    api = TelegramAPIServer.from_base(server.base_url)
    form_bot, json_bot = _bot(server, AiohttpSession(api=api)), _bot(server, BotApiSession(api=api))
    keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Баланс"), KeyboardButton(text="Help")]])
    try:
        sent = []
        for bot in (form_bot, json_bot):
            sent.append(
                await bot.send_message(
                    USER.id, "<b>Привет</b> & 0", reply_markup=keyboard, disable_notification=False
                )
            )
        form_call, json_call = server.calls_of("sendMessage")
        assert json_call.params == form_call.params
        assert json_call.params["parse_mode"] == "HTML" and json_call.params["disable_notification"] is False
        assert sent[1].text == sent[0].text == "Привет & 0"
        assert sent[1].reply_markup == sent[0].reply_markup
        assert sent[1].bot is json_bot  # bound to its bot, as aiogram's reading binds it

        server.expect_refusal("sendMessage", "too long")
        with pytest.raises(TelegramBadRequest, match="too long"):
            await json_bot.send_message(USER.id, "x" * 5000)
        photo = await json_bot.send_document(USER.id, BufferedInputFile(b"a,b\n1,2\n", "history.csv"))
        assert photo.document is not None and photo.document.file_name == "history.csv"
        assert server.calls_of("sendDocument")[0].files  # a file still goes as a multipart form
    finally:
        await form_bot.session.close()
        await json_bot.session.close()
