"""Per-update plumbing: one database unit of work, exactly-once delivery, the user and their texts,
blocked users and per-user rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import BaseMiddleware, Bot, Router
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.fsm.middleware import FSMContextMiddleware
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject, Update
from aiogram.types import User as TelegramUser
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot.metrics import DUPLICATE_KEY
from aisha.db.context import current_session
from aisha.db.models import ProcessedUpdate
from aisha.db.session import before_outside_call, commit, commits_before_outside_calls, run_at_end
from aisha.db.upsert import insert_ignore
from aisha.throttle import Verdict
from aisha.users.models import User
from aisha.users.service import TelegramProfile

if TYPE_CHECKING:
    from aisha.container import Services

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]
log = structlog.get_logger(__name__)


class CommitBeforeSend(BaseRequestMiddleware):
    """Before a Bot API call leaves, commits the work of the update being handled (see
    UnitOfWorkMiddleware); a no-op for jobs, whose units of work are their own."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        await before_outside_call()
        return await make_request(bot, method)


class KeepResponseModels(BaseRequestMiddleware):
    """aiogram reads each answer with `Response[<result type>]`, a pydantic model built on first
    use and cached by pydantic only weakly: after a garbage collection the next call builds its
    schema again (milliseconds). One kept per method type makes it built once per process."""

    def __init__(self) -> None:
        self._models: dict[type[Any], Any] = {}

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if type(method) not in self._models:
            self._models[type(method)] = Response[method.__returning__]  # type: ignore[name-defined]
        return await make_request(bot, method)


def run_filters_inline(router: Router) -> None:
    """aiogram runs a filter that is no coroutine (every `F` filter) through asyncio.to_thread: a
    thread hop for each filter of each handler tried, for a check of a few attributes. Ours are
    all such checks (no I/O), so they run on the event loop; call once the routers are joined."""
    for each in router.chain_tail:
        for observer in each.observers.values():
            # The router's own filters (`router.message.filter(...)`), then each handler's.
            for handler in (observer._handler, *observer.handlers):
                for check in handler.filters or ():
                    if not check.awaitable:
                        check.callback = _as_coroutine(check.callback)
                        check.awaitable = True


def _as_coroutine(check: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return check(*args, **kwargs)

    return call


class UserIsolationMiddleware(BaseMiddleware):
    """Each user's updates in a chat one after another (in this process, or in every process when
    the isolation is Redis's), each held until its unit of work has committed: the wizard state is
    read inside, so a quick next message is never read against a state not yet saved."""

    def __init__(self, fsm: FSMContextMiddleware) -> None:
        self._fsm = fsm  # aiogram's, for its keys and its isolation (it reads no state itself)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        context = self._fsm.resolve_event_context(data["bot"], data)
        if context is None:
            return await handler(event, data)
        async with self._fsm.events_isolation.lock(key=context.key):
            return await handler(event, data)


class UnitOfWorkMiddleware(BaseMiddleware):
    """One unit of work per update, exactly once, and nothing leaves while it is open.

    The update id is recorded in the same transaction as what the handlers change, so a crash
    before the first commit leaves neither, and a repeated delivery (also a concurrent one: on
    PostgreSQL the second insert waits for the first transaction) is handled once. Before any Bot
    API call or storage call a handler makes, what the update has done so far is committed: a reply
    that fails (the user blocked the bot, a timeout) can't undo a payment, and no lock is held
    while Telegram answers. What a handler writes after its reply commits at the end.
    """

    def __init__(self, services: Services) -> None:
        self._services = services

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, Update)
        async with self._services.sessions() as session:
            try:
                with commits_before_outside_calls(session):
                    result = await self._handle(handler, event, data, session)
                await commit(session)
                return result
            except BaseException:
                await session.rollback()
                raise
            finally:
                await run_at_end(session)  # e.g. the user's operation lock

    async def _handle(
        self, handler: Handler, event: Update, data: dict[str, Any], session: AsyncSession
    ) -> Any:
        first_time = await insert_ignore(
            session,
            ProcessedUpdate.__table__,  # type: ignore[arg-type]
            {"update_id": event.update_id, "processed_at": self._services.clock.now()},
            conflict_columns=["update_id"],
        )
        if not first_time:
            log.info("update.duplicate_dropped", update_id=event.update_id)
            data[DUPLICATE_KEY] = True
            return None
        data["session"] = session
        token = current_session.set(session)
        try:
            return await handler(event, data)
        finally:
            current_session.reset(token)


class UserMiddleware(BaseMiddleware):
    """Registers the user on first contact, refreshes them after, and binds their texts."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        tg_user: TelegramUser | None = data.get("event_from_user")
        translator = self._services.translator
        if tg_user is None or tg_user.is_bot:
            data["t"] = translator.bind(translator.default_locale)
            return await handler(event, data)
        profile = TelegramProfile(
            telegram_id=tg_user.id,
            username=tg_user.username,
            first_name=tg_user.first_name,
            last_name=tg_user.last_name,
            language_code=tg_user.language_code,
        )
        user, created = await self._services.users.register_or_touch(
            data["session"], profile=profile, locale=translator.resolve_locale(tg_user.language_code)
        )
        if created:
            log.info("user.registered", user_id=user.telegram_id, language=user.language)
        data["user"] = user
        data["user_created"] = created
        data["t"] = translator.bind(user.language)
        return await handler(event, data)


def _is_payment(event: Update) -> bool:
    """Money already moved (or is about to): never dropped, also for blocked or hasty users."""
    return event.pre_checkout_query is not None or (
        event.message is not None
        and (event.message.successful_payment is not None or event.message.refunded_payment is not None)
    )


class BlockedMiddleware(BaseMiddleware):
    """A blocked user's updates reach no handler; the first one after blocking gets one notice."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("user")
        assert isinstance(event, Update)
        if user is None or not user.is_blocked or _is_payment(event):
            return await handler(event, data)
        if await self._services.admin.claim_blocked_notice(session=data["session"], user_id=user.telegram_id):
            bot: Bot = data["bot"]
            await bot.send_message(user.telegram_id, data["t"]("limits.blocked"))
        log.info("update.blocked_user_dropped", user_id=user.telegram_id)
        return None


class ThrottleMiddleware(BaseMiddleware):
    """Per-user rate limit on messages and button presses (admins and payments are exempt): the
    first update over the limit gets a polite notice, the rest of the window is dropped silently."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        throttle = self._services.throttle
        tg_user: TelegramUser | None = data.get("event_from_user")
        assert isinstance(event, Update)
        if (
            throttle is None
            or tg_user is None
            or (event.message is None and event.callback_query is None)
            or _is_payment(event)
            or self._services.admin.is_admin(user_id=tg_user.id)
        ):
            return await handler(event, data)
        decision = await throttle.hit(user_id=tg_user.id)
        if decision.verdict is Verdict.ALLOW:
            return await handler(event, data)
        log.info("update.throttled", user_id=tg_user.id, verdict=decision.verdict.value)
        if decision.verdict is Verdict.WARN:
            text = data["t"]("limits.throttled", seconds=decision.retry_after)
            bot: Bot = data["bot"]
            if event.callback_query is not None:
                await bot.answer_callback_query(event.callback_query.id, text=text, show_alert=False)
            else:
                await bot.send_message(tg_user.id, text)
        return None
