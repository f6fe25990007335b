"""Running processes: `aisha run` (everything in one), `aisha api` and `aisha worker`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Coroutine
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import Bot, Dispatcher

from aisha.api import TELEGRAM_WEBHOOK_PATH
from aisha.bot.app import create_bot, create_dispatcher
from aisha.bot.commands import publish_commands
from aisha.bot.local_files import local_folder
from aisha.bot.messenger import BotMessenger
from aisha.bot.outgoing import OutgoingLimiter, create_limiter
from aisha.clock import Clock
from aisha.config import ConfigError, Settings
from aisha.container import Services, build_services
from aisha.jobs.tasks import register_tasks

if TYPE_CHECKING:
    from aisha.api.server import HttpServer

log = structlog.get_logger(__name__)
__all__ = ["Role", "Runtime"]

# An update in flight holds a few hundred new objects (aiogram's models, the unit of work's
# session, the HTTP request), freed when it ends, next to none of them in a reference cycle. At
# Python's default threshold (700 more allocations than frees) the collector's youngest pass ran
# every few updates under load, walked what was in flight and freed nothing: 10-15 % of an
# update's CPU (bench/updates.py). At this one it runs about once per thousand updates.
YOUNG_COLLECTION_THRESHOLD = 10_000


class Role(StrEnum):
    ALL = "all"  # bot (polling or webhook), HTTP app and jobs in one process
    API = "api"  # HTTP app taking webhooks; jobs go to the Redis queue
    WORKER = "worker"  # runs queued jobs and the recovery sweep


class Runtime:
    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.limiter: OutgoingLimiter = create_limiter(settings)
        self.bot: Bot = create_bot(settings, limiter=self.limiter)
        messenger = BotMessenger(self.bot, local_files=local_folder(settings))
        self.services: Services = build_services(
            settings, messenger=messenger, clock=clock, refunds=messenger
        )
        register_tasks(self.services)
        self.dispatcher: Dispatcher = create_dispatcher(self.services)
        self._server: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._polling = False
        self._receiver: asyncio.Task[None] | None = None

    def check_role(self, role: Role) -> None:
        if role is Role.API and not self.settings.webhook_mode:
            raise ConfigError("aisha api takes webhooks: set PUBLIC_BASE_URL (or use `aisha run` to poll)")
        if role is Role.WORKER and not self.settings.redis_url:
            raise ConfigError(
                "aisha worker takes jobs from Redis: set REDIS_URL (`aisha run` runs jobs itself)"
            )

    @property
    def allowed_updates(self) -> list[str]:
        return self.dispatcher.resolve_used_update_types()

    async def start(self, role: Role = Role.ALL, *, serve_http: bool = True) -> None:
        self.check_role(role)
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])
        me = await self.bot.get_me()
        log.info("runtime.starting", role=role.value, bot=me.username, webhook=self.settings.webhook_mode)
        await self.services.queue.startup()
        if role in (Role.ALL, Role.API) and serve_http:
            await self.start_http()
        if role in (Role.ALL, Role.API):
            await publish_commands(self.bot, self.services.translator)
        if role in (Role.ALL, Role.API) and self.settings.webhook_mode:
            await self.bot.set_webhook(
                url=f"{self.settings.public_base_url}{TELEGRAM_WEBHOOK_PATH}",
                secret_token=self.settings.webhook_secret.get_secret_value()
                if self.settings.webhook_secret
                else None,
                allowed_updates=self.allowed_updates,
            )
        elif role is Role.ALL:
            # Telegram refuses getUpdates while a webhook is set.
            await self.bot.delete_webhook(drop_pending_updates=False)
            self._polling = True
            self._spawn(self._poll())
        if role in (Role.ALL, Role.WORKER):
            self._spawn(
                self.services.recovery.run_forever(self.settings.recovery_interval_seconds, self._stopping)
            )
        if role is Role.WORKER:
            from taskiq.api import run_receiver_task

            # The receiver only ends when cancelled; stop() does that.
            self._receiver = asyncio.create_task(run_receiver_task(self.services.queue.broker))

    async def start_http(self) -> None:
        # Imported here: a worker serves no HTTP and never loads the server or the routes.
        from aisha.api.server import HttpServer

        server = HttpServer(self, host=self.settings.http_host, port=self.settings.http_port)
        await server.start()
        self._server = server

    async def _poll(self) -> None:
        await self.dispatcher.start_polling(
            self.bot,
            handle_signals=False,
            close_bot_session=False,
            allowed_updates=self.allowed_updates,
            polling_timeout=10,
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(coroutine))

    @property
    def http_port(self) -> int:
        """The bound port (useful with HTTP_PORT=0 in tests)."""
        assert self._server is not None
        return self._server.port

    async def stop(self) -> None:
        self._stopping.set()
        if self._polling:
            with contextlib.suppress(RuntimeError):
                await self.dispatcher.stop_polling()
        if self._receiver is not None:
            self._receiver.cancel()
            self._tasks.append(self._receiver)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.services.queue.shutdown()
        if self._server is not None:
            # Last of what takes work in: while the rest stops, FAL still fetches the files it was
            # just given and webhooks in flight finish; then the sessions they use close.
            await self._server.stop()
        await self.dispatcher.storage.close()
        await self.bot.session.close()
        await self.limiter.aclose()
        await self.services.aclose()
        log.info("runtime.stopped")

    async def run_until_signal(self, role: Role) -> None:
        import signal

        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        try:
            await self.start(role)
        except BaseException:
            # Close what was opened (sessions, pools), so the failure is all that gets reported.
            with contextlib.suppress(Exception):
                await self.stop()
            raise
        try:
            await done.wait()
        finally:
            await self.stop()
