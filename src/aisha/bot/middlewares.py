"""Per-update plumbing: one database unit of work, exactly-once delivery, the user and their texts,
blocked users and per-user rate limits."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import structlog
from aiogram import BaseMiddleware, Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.fsm.context import FSMContext
from aiogram.fsm.middleware import FSMContextMiddleware
from aiogram.fsm.storage.base import BaseStorage
from aiogram.methods import Response, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject, Update
from aiogram.types import User as TelegramUser
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql import ClauseElement

from aisha.bot.claim import claim_update
from aisha.bot.fsm import remember_read, storage_key
from aisha.bot.metrics import DUPLICATE_KEY
from aisha.db.context import current_session
from aisha.db.models import ProcessedUpdate
from aisha.db.session import (
    add_as_loaded,
    before_outside_call,
    commit,
    commits_before_outside_calls,
    run_at_end,
)
from aisha.db.upsert import insert_ignore
from aisha.throttle import Verdict
from aisha.users.models import User
from aisha.users.service import LAST_SEEN_RESOLUTION, TelegramProfile

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
        # The handlers' `state`, resolved once here: the claim and StateMiddleware use its key.
        data["state"] = context
        async with self._fsm.events_isolation.lock(key=context.key):
            return await handler(event, data)


class StateMiddleware(BaseMiddleware):
    """aiogram's FSM data for handlers (`fsm_storage`, `state`, `raw_state`), the state read inside
    the update's unit of work and under the user's lock (UserIsolationMiddleware's)."""

    def __init__(self, storage: BaseStorage) -> None:
        self._storage = storage

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        data["fsm_storage"] = self._storage
        context: FSMContext | None = data.get("state")
        if context is not None:
            data["raw_state"] = await context.get_state()
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

    def __init__(self, services: Services, *, fsm_in_database: bool = False) -> None:
        self._services = services
        # The FSM's records are in the database (no Redis): the claim reads the state (PostgreSQL).
        self._fsm_in_database = fsm_in_database
        self._one_statement: bool | None = None  # PostgreSQL: known at the first update

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
        if self._one_statement is None:
            self._one_statement = session.get_bind().dialect.name == "postgresql"
        if self._one_statement:
            first_time = await self._claim(event, data, session)
        else:
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

    async def _claim(self, event: Update, data: dict[str, Any], session: AsyncSession) -> bool:
        """The update id, the user's row and the wizard state in one statement (bot/claim.py);
        the rows are left in the session for UserMiddleware and the FSM storage."""
        tg_user: TelegramUser | None = data.get("event_from_user")
        context: FSMContext | None = data.get("state") if self._fsm_in_database else None
        fsm_key = storage_key(context.key) if context else None
        claim = await claim_update(
            session,
            update_id=event.update_id,
            now=self._services.clock.now(),
            user_id=tg_user.id if tg_user else None,
            fsm_key=fsm_key,
        )
        if claim.first_time:
            session.info[_CLAIMED_USER] = claim.user
            if fsm_key is not None:
                remember_read(session, fsm_key, claim.fsm)
        return claim.first_time


# A returning user's row is taken from here for this long (no read), as long as Telegram's profile
# and the last-seen mark need no write. A change through any session of this process (the bot's
# own settings, an admin's block, a deletion) drops it at once; one made by another process (the
# CLI) is seen at the latest after this long. With REDIS_URL (several replicas serve one user) the
# cache is off: a block or a deletion on one replica must hold on the next update, wherever it lands.
USER_CACHE_SECONDS = 10.0
# The user's row as the update's claim read it (PostgreSQL), None when there is none.
_CLAIMED_USER = "aisha.claimed_user"
_NOT_CLAIMED = object()
_USER_COLUMNS = tuple(column.key for column in User.__table__.columns)
_CHANGED_KEY = "aisha.users_changed"


class _UserChanges:
    """Which users changed in this process: their ids (or every one, when a statement's ids can't
    be read), counted by the `do_orm_execute` and `after_flush` events of every session."""

    def __init__(self) -> None:
        self.everyone = 0  # bumped when any user may have changed
        self.changed: dict[int, int] = {}  # telegram id → the `everyone` count it changed at

    def mark(self, ids: Iterable[int] | None) -> None:
        if ids is None:
            self.everyone += 1
            self.changed.clear()
            return
        for user_id in ids:
            self.changed[user_id] = self.everyone
        if len(self.changed) > 10_000:  # forget the old marks: count them all as changed
            self.mark(None)


USER_CHANGES = _UserChanges()


def _statement_user_ids(state: ORMExecuteState) -> list[int] | None:
    """The telegram ids a statement on `users` names in its WHERE, else None (maybe any user)."""
    try:
        params = dict(cast(ClauseElement, state.statement).compile().params)
    except Exception:  # a statement we can't read: every user may have changed
        return None
    if isinstance(state.parameters, Mapping):
        params.update(state.parameters)
    ids = [v for k, v in params.items() if k.startswith("telegram_id") and isinstance(v, int)]
    return ids or None


@event.listens_for(Session, "do_orm_execute")
def _user_statement(state: ORMExecuteState) -> None:
    # A row inserted was in no cache (a deleted one was dropped when it was deleted).
    if not (state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if table is None or getattr(table, "name", None) != User.__tablename__:
        return
    ids = _statement_user_ids(state)
    USER_CHANGES.mark(ids)
    # Again once committed: a read between this statement and the commit saw the old row.
    pending = state.session.info.setdefault(_CHANGED_KEY, [])
    pending.append(ids)


@event.listens_for(Session, "after_flush")
def _user_flushed(session: Session, _context: Any) -> None:
    ids = [o.telegram_id for o in (*session.new, *session.dirty, *session.deleted) if isinstance(o, User)]
    if ids:
        USER_CHANGES.mark(ids)
        session.info.setdefault(_CHANGED_KEY, []).append(ids)


@event.listens_for(Session, "after_commit")
def _user_committed(session: Session) -> None:
    for ids in session.info.pop(_CHANGED_KEY, ()):
        USER_CHANGES.mark(ids)


@dataclass(frozen=True, slots=True)
class _Cached:
    values: dict[str, Any]
    profile: tuple[str | None, str | None, str | None]
    until: float  # time.monotonic()
    everyone: int  # USER_CHANGES.everyone when read


class UserMiddleware(BaseMiddleware):
    """Registers the user on first contact, refreshes them after, and binds their texts.

    On PostgreSQL the row comes with the update's claim (bot/claim.py), fresh on every update.
    Elsewhere, a returning user whose row was read a moment ago (USER_CACHE_SECONDS) and changed
    by nobody since is put into the update's session as read then, without a round trip.
    """

    def __init__(self, services: Services, *, cache_seconds: float = USER_CACHE_SECONDS) -> None:
        self._services = services
        self._cache_seconds = cache_seconds
        self._cache: dict[int, _Cached] = {}

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        tg_user: TelegramUser | None = data.get("event_from_user")
        translator = self._services.translator
        if tg_user is None or tg_user.is_bot:
            data["t"] = translator.bind(translator.default_locale)
            return await handler(event, data)
        session: AsyncSession = data["session"]
        claimed = session.info.pop(_CLAIMED_USER, _NOT_CLAIMED)
        if claimed is not _NOT_CLAIMED:  # read with the update's claim: fresh, no cache needed
            user, created = await self._from_claim(session, tg_user, claimed)
        else:
            cached = self._cached(session, tg_user)
            user, created = (cached, False) if cached else await self._read(session, tg_user)
        data["user"] = user
        data["user_created"] = created
        data["t"] = translator.bind(user.language)
        return await handler(event, data)

    def _cached(self, session: AsyncSession, tg_user: TelegramUser) -> User | None:
        cached = self._cache.get(tg_user.id)
        if cached is None:
            return None
        now = time.monotonic()
        if (
            now >= cached.until
            or cached.everyone != USER_CHANGES.everyone
            or tg_user.id in USER_CHANGES.changed
            or cached.profile != (tg_user.username, tg_user.first_name, tg_user.last_name)
            or self._services.clock.now() - cached.values["last_seen_at"] >= LAST_SEEN_RESOLUTION
        ):
            del self._cache[tg_user.id]
            return None
        return add_as_loaded(session, User(**cached.values))

    async def _from_claim(
        self, session: AsyncSession, tg_user: TelegramUser, row: dict[str, Any] | None
    ) -> tuple[User, bool]:
        found = None if row is None else add_as_loaded(session, User(**row))
        user, created = await self._services.users.registered_or_touched(
            session,
            found,
            profile=_profile(tg_user),
            locale=self._services.translator.resolve_locale(tg_user.language_code),
        )
        if created:
            log.info("user.registered", user_id=user.telegram_id, language=user.language)
        return user, created

    async def _read(self, session: AsyncSession, tg_user: TelegramUser) -> tuple[User, bool]:
        translator = self._services.translator
        USER_CHANGES.changed.pop(tg_user.id, None)  # what is read now is the news
        everyone = USER_CHANGES.everyone
        user, created = await self._services.users.register_or_touch(
            session, profile=_profile(tg_user), locale=translator.resolve_locale(tg_user.language_code)
        )
        if created:
            log.info("user.registered", user_id=user.telegram_id, language=user.language)
        if self._cache_seconds <= 0:
            return user, created
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[tg_user.id] = _Cached(
            values={key: getattr(user, key) for key in _USER_COLUMNS},
            profile=(user.username, user.first_name, user.last_name),
            until=time.monotonic() + self._cache_seconds,
            everyone=everyone,
        )
        return user, created


def _profile(tg_user: TelegramUser) -> TelegramProfile:
    return TelegramProfile(
        telegram_id=tg_user.id,
        username=tg_user.username,
        first_name=tg_user.first_name,
        last_name=tg_user.last_name,
        language_code=tg_user.language_code,
    )


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
