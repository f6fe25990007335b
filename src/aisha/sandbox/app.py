"""`aisha sandbox`: the whole bot on the embedded defaults, wired to the in-process fakes of
Telegram, FAL and OpenAI, with a chat page to talk to it (see web.py).

Everything lives under one data folder and binds 127.0.0.1 only. The bot runs in webhook mode on
its own port, so the fake Telegram posts updates to it and the fake FAL its signed webhooks, as in
production. Restarting on the same folder carries on: the database, the chat, the fakes' files and
unfinished jobs are all kept there, and the ports that stored URLs point at are remembered:

    aisha.db, files/       the bot's database and stored files
    telegram/, fal/        the fakes' state.json and the files they hold
    secrets.json           the fake bot token (file links are signed with a key derived from it)
                           and the webhook secret
    ports.json             the fake FAL's port and the bot's
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from aisha.closing import Started
from aisha.config import Settings, TranscriptionBackend, load_settings
from aisha.db.migrate import upgrade
from aisha.i18n import Translator
from aisha.providers.speech import local_speech_model
from aisha.runtime import Role, Runtime
from aisha.sandbox._state import read_json, write_json_atomically
from aisha.sandbox.errors import SandboxError
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.openai import FakeOpenAIServer
from aisha.sandbox.panel import CALLS_LIMIT
from aisha.sandbox.simulated import STRUCTURED_REPLIES, render_sandbox_image, transcript_script
from aisha.sandbox.telegram import FakeTelegramServer, FakeUser
from aisha.sandbox.user import SandboxUser

log = structlog.get_logger(__name__)

HOST = "127.0.0.1"
BOT_ID = 123456
USER_ID = 100001
FAL_KEY = "sandbox-fal-key"
OPENAI_KEY = "sk-sandbox"
GENERATION_DELAY = 1.0  # seconds until a generated image is "ready"
WELCOME_BONUS = 100  # a newcomer sees the bonus in /balance, and still tops up for an avatar


class SandboxStartError(Exception):
    """The sandbox cannot start; the message says why and what to do."""


class Sandbox(Started):
    """``async with Sandbox(data_dir=..., port=...) as sandbox:`` then open ``sandbox.url``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int = 8090,
        training_delay: float = 20.0,
        language: str = "en",
        local_speech: bool | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port  # the page's; 0 picks a free one
        self.training_delay = training_delay
        self.language = language
        # Real speech recognition (the local Whisper) when it is installed; else simulated texts.
        self.local_speech = local_speech
        self.translator = Translator.load(language)
        self._stack = contextlib.AsyncExitStack()
        self._delivery = asyncio.Lock()  # one update at a time, in order, as Telegram delivers a chat
        self._url: str | None = None
        self.page: web.Application | None = None  # the chat page's app, once served

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keys = _secrets(self.data_dir / "secrets.json")
        ports = _RememberedPorts(self.data_dir / "ports.json")
        await self._start_fakes(ports, bot_token=keys["bot_token"])
        await self._start_bot(ports, webhook_secret=keys["webhook_secret"])
        self.user = SandboxUser(
            self.telegram,
            FakeUser(id=USER_ID, first_name="Sandbox user", language_code=self.language),
            deliver=self.deliver,
            scratch_dir=self.data_dir / "tmp",
        )
        await self._serve_page()

    async def _start_fakes(self, ports: _RememberedPorts, *, bot_token: str) -> None:
        self.telegram = FakeTelegramServer(
            f"{BOT_ID}:{bot_token}",
            bot_username="aisha_sandbox_bot",
            bot_first_name="Aisha",
            host=HOST,
            state_dir=self.data_dir / "telegram",
            keep_calls=CALLS_LIMIT,
        )
        self.fal = FakeFalServer(
            key=FAL_KEY,
            host=HOST,
            port=ports.take("fal"),
            complete_after=GENERATION_DELAY,
            training_complete_after=self.training_delay,
            image_renderer=render_sandbox_image,
            state_dir=self.data_dir / "fal",
        )
        self.openai = FakeOpenAIServer(
            api_key=OPENAI_KEY,
            host=HOST,
            transcripts=transcript_script(self.language),
            structured_replies=STRUCTURED_REPLIES,
        )
        for fake in (self.telegram, self.fal, self.openai):
            await self._stack.enter_async_context(fake)
        ports.remember("fal", _port_of(self.fal.base_url))

    async def _start_bot(self, ports: _RememberedPorts, *, webhook_secret: str) -> None:
        bot_port = ports.take("bot") or _free_port()
        ports.remember("bot", bot_port)
        settings = self._settings(bot_port, webhook_secret=webhook_secret)
        # Everything runs on 127.0.0.1, which the fake FAL (like FAL) won't fetch from unless told:
        # the bot's own address stands in for its public one here.
        assert settings.public_base_url is not None
        self.fal.reachable(settings.public_base_url)
        await asyncio.to_thread(upgrade, settings.database_url)
        self.runtime = Runtime(settings)
        self._stack.push_async_callback(self.runtime.stop)
        await self.runtime.start(Role.ALL)
        self.fal.resume_jobs()  # the bot takes webhooks now: let trainings from before a restart end

    def _settings(self, bot_port: int, *, webhook_secret: str) -> Settings:
        settings = self._base_settings(bot_port, webhook_secret=webhook_secret)
        local = self.local_speech
        if local is None:
            local = local_speech_model(settings) is not None
        # The fake OpenAI stays for prompts and vision; speech is heard on this machine (the
        # bundled tiny.en knows English only) or, without it, answered with a simulated text.
        backend = TranscriptionBackend.LOCAL if local else TranscriptionBackend.OPENAI
        return settings.model_copy(update={"transcription_backend": backend})

    def _base_settings(self, bot_port: int, *, webhook_secret: str) -> Settings:
        base = f"http://{HOST}:{bot_port}"
        return load_settings(
            _env_file=None,  # the embedded defaults, whatever ./.env says about production
            bot_token=self.telegram.token,
            telegram_api_url=self.telegram.base_url,
            database_url=f"sqlite+aiosqlite:///{self.data_dir / 'aisha.db'}",
            redis_url=None,
            storage_url=f"file://{self.data_dir / 'files'}",
            http_host=HOST,
            http_port=bot_port,
            public_base_url=base,
            webhook_secret=webhook_secret,
            fal_key=FAL_KEY,
            fal_queue_url=self.fal.base_url,
            fal_rest_url=self.fal.base_url,
            fal_jwks_url=self.fal.jwks_url,
            openai_api_key=OPENAI_KEY,
            openai_base_url=self.openai.base_url,
            default_locale=self.language,
            welcome_bonus=WELCOME_BONUS,
            # The fake Telegram has no flood limits: no need to space a chat's messages a second apart.
            telegram_private_chat_per_second=0,
        )

    async def _serve_page(self) -> None:
        from aisha.sandbox.web import create_app

        self.page = create_app(self)
        runner = web.AppRunner(self.page, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        self._stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, HOST, self.port).start()
        except OSError as exc:
            raise SandboxStartError(
                f"port {self.port} is in use ({exc.strerror}): choose another with --port"
            ) from None
        self._url = f"http://{HOST}:{runner.addresses[0][1]}/"

    async def stop(self) -> None:
        await self._stack.aclose()

    @property
    def url(self) -> str:
        """The page to open."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started")
        return self._url

    # ------------------------------------------------------------------------------ updates

    async def deliver(self, update: dict[str, Any]) -> None:
        """Post one update to the bot's webhook and wait until it was handled."""
        async with self._delivery:
            try:
                status = await self.telegram.deliver(update)
            except aiohttp.ClientError as exc:
                raise SandboxError(502, "sandbox.error_bot_unreachable", reason=str(exc)) from None
        if status is not None and status != 200:
            # Telegram would retry; here the bot's log says what went wrong.
            log.warning("sandbox.update_failed", status=status, update_id=update.get("update_id"))


# ------------------------------------------------------------------------------- data folder


def _secrets(path: Path) -> dict[str, str]:
    """The fake bot token (file links are signed with a key derived from it) and the webhook
    secret: made once per data folder and kept, so links and webhooks survive a restart."""
    stored = read_json(path)
    if stored is None:
        stored = {"bot_token": secrets.token_urlsafe(24), "webhook_secret": secrets.token_urlsafe(32)}
        write_json_atomically(path, stored)
    return {key: str(value) for key, value in stored.items()}


class _RememberedPorts:
    """Ports that URLs stored in the bot's database point at (the fake FAL's files, the bot's
    webhooks given to FAL jobs), kept so those URLs still work after a restart."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ports: dict[str, int] = read_json(path) or {}

    def take(self, name: str) -> int:
        """The remembered port, checked to be free; 0 when there is none yet."""
        port = self._ports.get(name, 0)
        if port and not _is_free(port):
            raise SandboxStartError(
                f"port {port}, remembered in {self._path} for the sandbox's {name}, is in use. "
                "Stop what uses it (another sandbox on this folder?), or delete that file to take new "
                "ports (links stored before to generated files and trained avatars will then break)."
            )
        return port

    def remember(self, name: str, port: int) -> None:
        if self._ports.get(name) != port:
            self._ports[name] = port
            write_json_atomically(self._path, self._ports)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: a port lingering in TIME_WAIT after a restart is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
