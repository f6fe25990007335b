"""How an update finds its handler: aiogram's walk through the routers, with less done per router.

aiogram's `Router.propagate_event` wraps each router's outer middlewares for every update (a
`functools.wraps` and a partial each, also when there are none) and awaits its root filters (a
copy of the update's data, also when there are none), and a matched handler is wrapped in its
inner middlewares the same way. With a dozen routers that was most of the dispatch. The walk here
is the same (the same order, the same filters with the same data, the first handler that passes,
`SkipHandler` going on to the next), skipping only that empty machinery: a router that has outer
middlewares of its own is walked by aiogram itself. A handler whose first filter is a `Command`
is passed over, without running its filters, by a message whose first word that filter refuses
(`gate_commands`): a /balance no longer builds a CommandObject for each command above its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Dispatcher, Router
from aiogram.dispatcher.event.bases import REJECTED, UNHANDLED, SkipHandler
from aiogram.dispatcher.event.telegram import TelegramEventObserver
from aiogram.filters import Command, CommandStart
from aiogram.types import Message, TelegramObject


def _walkable() -> bool:
    """Whether this aiogram has the parts of its routers the walk below uses (aiogram 3.28-3.31
    do); on one without them, aiogram walks its routers itself, as it always could."""
    observer = Router().message
    return (
        hasattr(observer, "_handler")
        and hasattr(observer, "_resolve_middlewares")
        and hasattr(observer, "check_root_filters")
        and hasattr(observer.outer_middleware, "wrap_middlewares")
    )


LEAN_WALK = _walkable()


class LeanDispatcher(Dispatcher):
    """A Dispatcher that walks its routers with `propagate` below."""

    async def propagate_event(self, update_type: str, event: TelegramObject, **kwargs: Any) -> Any:
        if not LEAN_WALK:
            return await super().propagate_event(update_type, event, **kwargs)
        return await propagate(self, update_type, event, kwargs, _command_word(event))


async def propagate(
    router: Router, update_type: str, event: TelegramObject, data: dict[str, Any], word: str | None
) -> Any:
    """`router.propagate_event(update_type, event, **data)`, as aiogram does it; `word` is the
    message's first word (`_command_word`), read once for the whole walk."""
    observer = router.observers.get(update_type)
    if observer is not None and len(observer.outer_middleware):
        return await Router.propagate_event(router, update_type, event, **data)
    data = {**data, "event_router": router}  # a copy: what this router adds stays in its subtree
    if observer is not None:
        if observer._handler.filters:  # the router's own filters (`router.message.filter(...)`)
            passed, data = await observer.check_root_filters(event, **data)
            if not passed:
                return UNHANDLED
        response = await _trigger(observer, event, data, word)
        if response is REJECTED:
            return UNHANDLED
        if response is not UNHANDLED:
            return response
    response = UNHANDLED
    for sub_router in router.sub_routers:
        response = await propagate(sub_router, update_type, event, data, word)
        if response is not UNHANDLED:
            break
    return response


async def _trigger(
    observer: TelegramEventObserver, event: TelegramObject, data: dict[str, Any], word: str | None
) -> Any:
    """`observer.trigger(event, **data)`: the first handler whose filters pass is called."""
    if not observer.handlers:
        return UNHANDLED
    kwargs = dict(data)  # "handler" and what filters find are the handler's, not the sub-routers'
    for handler in observer.handlers:
        gate = _COMMAND_GATES.get(id(handler))
        if gate is not None and not gate.may_pass(word):
            continue  # its Command filter, first of its filters, would refuse this message
        kwargs["handler"] = handler
        passed, found = await handler.check(event, **kwargs)
        if not passed:
            continue
        kwargs.update(found)
        middlewares = observer._resolve_middlewares()  # inner ones, of this router and its parents
        try:
            if middlewares:
                wrapped = observer.outer_middleware.wrap_middlewares(middlewares, handler.call)
                return await wrapped(event, kwargs)
            return await handler.call(event, **kwargs)
        except SkipHandler:
            continue
    return UNHANDLED


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


class _CommandGate:
    """What a handler's first filter, an aiogram `Command` of plain names, asks first of a message:
    its first word's prefix and name (`Command.extract_command`, `validate_prefix`,
    `validate_command`). A message that fails these is one the filter refuses; one that passes
    still goes through the filter itself (the mention, a deep link, its magic)."""

    __slots__ = ("ignore_case", "names", "prefix")

    def __init__(self, command: Command) -> None:
        self.ignore_case = command.ignore_case
        self.names = frozenset(
            str(name).casefold() if self.ignore_case else str(name) for name in command.commands
        )
        self.prefix = command.prefix

    def may_pass(self, word: str | None) -> bool:
        if word is None:  # no text or caption: the filter refuses it too, but let it say so
            return True
        if word[0] not in self.prefix:
            return False
        name = word[1:].partition("@")[0]
        return (name.casefold() if self.ignore_case else name) in self.names


# Handler id -> its gate; filled once the routers are joined (`gate_commands`), and each entry
# gone with its handler (a test builds many dispatchers; an id is reused only after that).
_COMMAND_GATES: dict[int, _CommandGate] = {}


def _command_word(event: TelegramObject) -> str | None:
    """The first word of a message's text (or caption), as `Command` reads it; None otherwise."""
    if not isinstance(event, Message):
        return None
    text = event.text or event.caption
    words = text.split(maxsplit=1) if text else None
    return words[0] if words else None


def gate_commands(router: Router) -> None:
    """A message command (/balance) is tried against every handler above its own, and most of
    them start with a `Command` filter that refuses it after building aiogram's CommandObject
    through three calls. Such a handler gets a gate that refuses the message by its first word
    alone, as the filter would; call once the routers are joined."""
    for each in router.chain_tail:
        for handler in each.message.handlers:
            first = handler.filters[0].callback if handler.filters else None
            # Only these two classes: a subclass may read a command otherwise.
            if not isinstance(first, Command) or type(first) not in (Command, CommandStart):
                continue
            if all(isinstance(name, str) for name in first.commands):
                _COMMAND_GATES[id(handler)] = _CommandGate(first)
                weakref.finalize(handler, _COMMAND_GATES.pop, id(handler), None)
