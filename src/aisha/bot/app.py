"""The Bot and the Dispatcher: one Router per feature, joined here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.redis import RedisStorage
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.bot.fsm import SqlStorage
from aisha.bot.middlewares import UnitOfWorkMiddleware, UserMiddleware
from aisha.bot.routers import avatars, billing, generation, settings, start, transcription
from aisha.config import Settings

if TYPE_CHECKING:
    from aisha.container import Services


def create_bot(settings: Settings) -> Bot:
    server = TelegramAPIServer.from_base(settings.telegram_api_url, is_local=settings.telegram_api_local)
    return Bot(
        token=settings.require_bot_token(),
        session=AiohttpSession(api=server),
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )


def create_fsm_storage(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> BaseStorage:
    """Redis when configured (shared by every process), else the database: never only memory,
    so a wizard survives a restart."""
    if settings.redis_url:
        return RedisStorage.from_url(settings.redis_url)
    return SqlStorage(sessions)


def create_dispatcher(services: Services) -> Dispatcher:
    storage = create_fsm_storage(services.settings, services.sessions)
    dispatcher = Dispatcher(storage=storage, services=services)
    dispatcher.update.outer_middleware(UnitOfWorkMiddleware(services))
    dispatcher.update.outer_middleware(UserMiddleware(services))
    dispatcher.include_routers(
        # Before start's /cancel: inside the avatar wizard, /cancel must also remove the uploads.
        avatars.create_cancel_router(services),
        start.create_router(services),
        settings.create_router(services),
        billing.create_router(services),
        avatars.create_router(services),
        transcription.create_router(services),
        # Feature routers go above this line; the fallback answers what none of them took.
        # Generation is the last of them: any text outside a wizard is a prompt.
        generation.create_router(services),
        start.create_fallback_router(),
    )
    return dispatcher
