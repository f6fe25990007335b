"""Telegram's limits on what the bot sends, shared by every process, and 429s waited out.

Every request that sends or edits a message passes through `OutgoingLimitMiddleware`, installed
on the Bot's HTTP session, so handlers, jobs and broadcasts all take their turn. The limiter
hands out time slots: about 30 messages a second overall, one a second per private chat and
20 a minute per group. With REDIS_URL the slots live in Redis (a Lua script reserves one, on
Redis's clock), so N API and M worker processes share them; otherwise they live in the process. A 429 (`TelegramRetryAfter`) is waited out for
`retry_after` seconds and the request is sent again, up to `max_retries` times.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response, TelegramMethod

    from aisha.config import Settings

log = structlog.get_logger(__name__)
KEY_PREFIX = "aisha:tg-limit"
# Sends and edits that put a message in a chat; chat actions, answers to callbacks and the rest
# are not messages and go straight through.
_UNLIMITED = frozenset({"sendchataction", "answercallbackquery", "answerprecheckoutquery"})
_LIMITED_PREFIXES = ("send", "edit", "copy", "forward")


@dataclass(frozen=True)
class Limits:
    """Minimum spacing between messages, in seconds; 0 means no limit."""

    overall: float
    private_chat: float
    group_chat: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        def spacing(rate: float, per: float) -> float:
            return per / rate if rate > 0 else 0.0

        return cls(
            overall=spacing(settings.telegram_messages_per_second, 1.0),
            private_chat=spacing(settings.telegram_private_chat_per_second, 1.0),
            group_chat=spacing(settings.telegram_group_chat_per_minute, 60.0),
        )

    def for_chat(self, chat_id: int | str) -> float:
        # Private chats have positive ids; groups, supergroups and channels negative ones (or @name).
        return self.private_chat if isinstance(chat_id, int) and chat_id > 0 else self.group_chat


class SlotStore(Protocol):
    async def reserve(self, key: str, spacing: float) -> float:
        """Reserve the next free slot of `key`, `spacing` seconds after the last one; returns
        the seconds to wait for it."""
        ...

    async def aclose(self) -> None: ...


class OutgoingLimiter:
    """The chat's slot first, then the overall one once the chat's turn has come: a chat that
    must wait never holds up messages to other chats."""

    def __init__(self, store: SlotStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits

    async def acquire(self, chat_id: int | str) -> None:
        for key, spacing in (
            (f"chat:{chat_id}", self.limits.for_chat(chat_id)),
            ("all", self.limits.overall),
        ):
            if spacing > 0:
                wait = await self.store.reserve(key, spacing)
                if wait > 0:
                    await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self.store.aclose()


class LocalSlots:
    """Slots in this process: enough when one process sends everything (`aisha run`)."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    async def reserve(self, key: str, spacing: float) -> float:
        now = time.monotonic()
        slot = max(now, self._next.get(key, now))
        self._next[key] = slot + spacing
        if len(self._next) > 10_000:  # forget chats whose slot has passed
            self._next = {k: v for k, v in self._next.items() if v > now}
        return slot - now

    async def aclose(self) -> None:
        return None


# KEYS: the slot key. ARGV: spacing in ms. Returns the milliseconds to wait for the reserved slot.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local spacing = tonumber(ARGV[1])
redis.call('SET', KEYS[1], slot + spacing, 'PX', slot + spacing - now + 1000)
return slot - now
"""


class RedisSlots:
    """Slots in Redis (on Redis's clock), shared by every API and worker process."""

    def __init__(self, url: str) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(url)
        self._script = self._redis.register_script(_RESERVE)

    async def reserve(self, key: str, spacing: float) -> float:
        from redis.exceptions import RedisError

        try:
            wait_ms = await self._script(keys=[f"{KEY_PREFIX}:{key}"], args=[max(1, round(spacing * 1000))])
        except (RedisError, OSError) as error:
            # Fail open: without Redis the message still goes (a 429 is then waited out).
            log.warning("telegram.limiter_unavailable", error=type(error).__name__)
            return 0.0
        return max(0, int(wait_ms)) / 1000

    async def aclose(self) -> None:
        await self._redis.aclose()


def create_limiter(settings: Settings) -> OutgoingLimiter:
    store: SlotStore = RedisSlots(settings.redis_url) if settings.redis_url else LocalSlots()
    return OutgoingLimiter(store, Limits.from_settings(settings))


def _chat_of(method: TelegramMethod[TelegramType]) -> int | str | None:
    name = type(method).__name__.lower()
    if name in _UNLIMITED or not name.startswith(_LIMITED_PREFIXES):
        return None
    chat_id = getattr(method, "chat_id", None)
    return chat_id if isinstance(chat_id, int | str) else None


class OutgoingLimitMiddleware(BaseRequestMiddleware):
    def __init__(self, limiter: OutgoingLimiter, *, max_retries: int = 3) -> None:
        self.limiter = limiter
        self._max_retries = max_retries

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        chat_id = _chat_of(method)
        for attempt in range(self._max_retries + 1):
            if chat_id is not None:
                await self.limiter.acquire(chat_id)
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                if attempt == self._max_retries:
                    raise
                log.warning(
                    "telegram.retry_after", method=error.method.__api_method__, seconds=error.retry_after
                )
                await asyncio.sleep(error.retry_after)
        raise AssertionError("unreachable")
