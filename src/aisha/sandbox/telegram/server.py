"""The fake Telegram server: the public facade tests and the sandbox use."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from aisha.sandbox.telegram.bot_methods import BotMethods
from aisha.sandbox.telegram.constants import _MAX_BODY
from aisha.sandbox.telegram.models import WebhookConfig


class FakeTelegramServer(BotMethods):
    """An in-process Telegram Bot API server for one bot token.

    Use it as ``async with FakeTelegramServer() as server:`` and give ``server.base_url`` to
    aiogram's ``TelegramAPIServer.from_base``. Every request is recorded in ``calls``.
    """

    def __init__(
        self,
        token: str = "123456:TEST",  # noqa: S107 - a fake token for the fake server
        *,
        bot_username: str = "aisha_test_bot",
        bot_first_name: str = "Aisha",
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: Path | None = None,
        keep_calls: int | None = None,
        local_dir: Path | None = None,
        local_server_dir: str | None = None,
    ) -> None:
        """``state_dir``: keep the chats, files and counters there (saved on every change, loaded
        here), so a sandbox restarted on the same folder carries on the same conversation.
        ``keep_calls``: remember only about the newest N calls (a long sandbox session would
        otherwise hold every upload's bytes); None keeps all, as tests want.

        ``local_dir`` makes it a local Bot API server (``telegram-bot-api --local --dir``): getFile
        of any size writes the file to ``local_dir/<token>/...`` and answers with its absolute path
        there (no HTTP download, which answers 404), named as the server sees that folder:
        ``local_server_dir`` (a container's own path) or ``local_dir`` itself. Without it, the public
        Bot API: getFile of a file over 20 MB is refused ("file is too big")."""
        super().__init__(
            token,
            bot_username=bot_username,
            bot_first_name=bot_first_name,
            host=host,
            port=port,
            state_dir=state_dir,
            keep_calls=keep_calls,
            local_dir=local_dir,
            local_server_dir=local_server_dir,
        )
        if state_dir is not None:
            self._load_state(state_dir)
        self._handlers = self._method_table()

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        self._closing = False
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._handle_file)
        # Handler cancellation ends long polls whose client went away, as Telegram does.
        await self._listen(app, handler_cancellation=True)

    async def stop(self) -> None:
        """Answer pending long polls at once, then shut the server down."""
        if self._runner is None:
            return
        self._closing = True
        self._wake_pollers()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._close()

    @property
    def base_url(self) -> str:
        """``http://host:port`` — the value for TELEGRAM_API_URL / ``TelegramAPIServer.from_base``."""
        return self._root_url()

    @property
    def token(self) -> str:
        return self._token

    @property
    def bot_id(self) -> int:
        return self._bot_id

    @property
    def bot_username(self) -> str:
        return self._bot_username

    @property
    def bot_first_name(self) -> str:
        return self._bot_first_name

    @property
    def webhook(self) -> WebhookConfig | None:
        return self._webhook
