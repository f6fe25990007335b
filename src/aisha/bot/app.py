"""The Bot and the Dispatcher: one Router per feature, joined here."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.base import (
    DEFAULT_DESTINY,
    BaseEventIsolation,
    BaseStorage,
    DefaultKeyBuilder,
    StorageKey,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.bot.api_session import BotApiSession
from aisha.bot.fsm import SqlStorage, UserEventIsolation
from aisha.bot.metrics import ObserveUpdateMiddleware
from aisha.bot.middlewares import (
    USER_CACHE_SECONDS,
    BlockedMiddleware,
    CommitBeforeSend,
    KeepResponseModels,
    StateMiddleware,
    ThrottleMiddleware,
    UnitOfWorkMiddleware,
    UserIsolationMiddleware,
    UserMiddleware,
)
from aisha.bot.outgoing import OutgoingLimiter, OutgoingLimitMiddleware, create_limiter
from aisha.bot.routers import (
    admin,
    avatars,
    billing,
    generation,
    privacy,
    settings,
    start,
    support,
    transcription,
)
from aisha.bot.routing import LeanDispatcher, gate_commands, run_filters_inline
from aisha.bot.stale_callbacks import StaleCallbackAnswerMiddleware
from aisha.bot.updates import SkipUnreadableUpdatesMiddleware
from aisha.config import Settings

if TYPE_CHECKING:
    from aisha.container import Services


def create_bot(settings: Settings, *, limiter: OutgoingLimiter | None = None) -> Bot:
    """The Bot; a handler's call first commits its update's work; every send and edit waits for
    its slot under Telegram's limits (shared through Redis when configured) and a 429 is waited
    out and retried, for handlers and jobs alike; a button answered too late counts as answered,
    and polling passes over an unreadable update. Calls go as JSON and answers are read straight
    from it (bot/api_session.py)."""
    server = TelegramAPIServer.from_base(settings.telegram_api_url, is_local=settings.telegram_api_local)
    session = BotApiSession(api=server)
    # First: an update's work is committed before anything leaves (and before waiting for a slot).
    session.middleware(CommitBeforeSend())
    session.middleware(
        OutgoingLimitMiddleware(
            limiter or create_limiter(settings), max_retries=settings.telegram_max_retries
        )
    )
    session.middleware(StaleCallbackAnswerMiddleware())
    session.middleware(SkipUnreadableUpdatesMiddleware())
    session.middleware(KeepResponseModels())
    return Bot(
        token=settings.require_bot_token(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )


class DestinyKeyBuilder(DefaultKeyBuilder):
    """aiogram's Redis keys, unchanged for the default destiny (so wizards in flight survive a
    deploy), with any other destiny (the resume intent, bot/resume.py) as a part of its own."""

    def build(self, key: StorageKey, part: Literal["data", "state", "lock"] | None = None) -> str:
        if key.destiny == DEFAULT_DESTINY:
            return super().build(key, part)
        base = super().build(replace(key, destiny=DEFAULT_DESTINY))
        return self.separator.join([base, key.destiny, *([part] if part else [])])


def create_fsm_storage(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> BaseStorage:
    """Redis when configured (shared by every process), else the database: never only memory,
    so a wizard survives a restart."""
    if settings.redis_url:
        # Imported here: a process with no REDIS_URL never loads redis (6 MB here).
        from aiogram.fsm.storage.redis import RedisStorage

        return RedisStorage.from_url(settings.redis_url, key_builder=DestinyKeyBuilder())
    return SqlStorage(sessions)


def create_event_isolation(storage: BaseStorage) -> BaseEventIsolation:
    """Each user's updates one at a time (see UserEventIsolation): across every process through
    the FSM's Redis when it has one (a lock that expires after 60 s, should a process die holding
    it; closed with the storage)."""
    if "aiogram.fsm.storage.redis" in sys.modules:  # a RedisStorage exists only once it is loaded
        from aiogram.fsm.storage.redis import RedisEventIsolation, RedisStorage

        if isinstance(storage, RedisStorage):
            return RedisEventIsolation(storage.redis)
    return UserEventIsolation()


def create_dispatcher(services: Services) -> Dispatcher:
    storage = create_fsm_storage(services.settings, services.sessions)
    # aiogram's own FSM middleware is off: it would read the state before the update's unit of
    # work exists (on a connection of its own); ours below reads it inside, under the same lock.
    dispatcher = LeanDispatcher(
        storage=storage,
        events_isolation=create_event_isolation(storage),
        disable_fsm=True,
        services=services,
    )
    # Outermost: the user's updates one at a time, each until its transaction has committed.
    dispatcher.update.outer_middleware(UserIsolationMiddleware(dispatcher.fsm))
    # Times the whole update and tags its log lines.
    dispatcher.update.outer_middleware(ObserveUpdateMiddleware(services.metrics))
    # The wizard state, read once in the update's transaction (the lock is already held); with
    # the records in the database, on PostgreSQL, read by the unit of work's first statement.
    in_database = isinstance(storage, SqlStorage)
    dispatcher.update.outer_middleware(UnitOfWorkMiddleware(services, fsm_in_database=in_database))
    dispatcher.update.outer_middleware(StateMiddleware(storage))
    # On PostgreSQL the user's row is read with the update's claim. Elsewhere (SQLite), one
    # process: its cache of user rows sees every change; several (REDIS_URL): no cache.
    user_cache = 0.0 if services.settings.redis_url else USER_CACHE_SECONDS
    dispatcher.update.outer_middleware(UserMiddleware(services, cache_seconds=user_cache))
    dispatcher.update.outer_middleware(BlockedMiddleware(services))
    dispatcher.update.outer_middleware(ThrottleMiddleware(services))
    dispatcher.include_routers(
        # Admin first: its commands must never be taken for a prompt or a wizard's input.
        admin.create_router(services),
        # Next: inside a support conversation, a text or a voice goes to the operators, never to
        # generation or transcription (no paid action), and /cancel leaves it.
        support.create_router(services),
        # Before start's /cancel: inside the avatar wizard, /cancel must also remove the uploads.
        avatars.create_cancel_router(services),
        start.create_router(services),
        privacy.create_router(services),
        settings.create_router(services),
        billing.create_router(services),
        avatars.create_router(services),
        transcription.create_router(services),
        # Feature routers go above this line; the fallback answers what none of them took.
        # Generation is the last of them: any text outside a wizard is a prompt.
        generation.create_router(services),
        start.create_fallback_router(),
    )
    run_filters_inline(dispatcher)
    gate_commands(dispatcher)
    return dispatcher
