"""The lean router walk (bot/routing.py) takes the handler aiogram would take, with the same data:
root filters that refuse a router and its subtree, filters' data, SkipHandler, a router's own
outer middleware, inner middlewares of a parent, and what nobody handles."""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiogram import BaseMiddleware, Bot, Dispatcher, F, Router
from aiogram.dispatcher.event.bases import UNHANDLED, SkipHandler
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message, TelegramObject, Update

from aisha.bot import routing
from aisha.bot.routing import LEAN_WALK, LeanDispatcher, gate_commands, run_filters_inline

TOKEN = "123456789:AAH-routing-test-token"
ADMIN, USER = 1, 2


def _update(update_id: int, user_id: int, text: str) -> Update:
    # "caption:" makes the text a photo's caption (a Command filter reads either).
    caption = text.removeprefix("caption:") if text.startswith("caption:") else None
    content: dict[str, Any] = (
        {"caption": caption, "photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}]}
        if caption is not None
        else {"text": text}
    )
    return Update.model_validate(
        {
            "update_id": update_id,
            "message": {
                "message_id": update_id,
                "date": 0,
                "chat": {"id": user_id, "type": "private"},
                "from": {"id": user_id, "is_bot": False, "first_name": "A"},
                **content,
            },
        }
    )


class Tag(BaseMiddleware):
    """Adds `name` to the data's trail, so a test sees which middlewares ran, in which order."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        data["trail"] = (*data.get("trail", ()), self.name)
        return await handler(event, data)


def _build(dispatcher: Dispatcher) -> Dispatcher:
    admin = Router(name="admin")
    admin.message.filter(F.from_user.id == ADMIN)

    @admin.message(Command("stats"))
    async def stats(message: Message, event_router: Router) -> str:
        return f"stats by {event_router.name}"

    features = Router(name="features")
    features.message.middleware(Tag("inner"))

    @features.message(Command("skip"))
    async def skipped(message: Message) -> str:
        raise SkipHandler

    @features.message(Command("skip", "echo"))
    async def echo(message: Message, command: CommandObject, trail: tuple[str, ...] = ()) -> str:
        return f"echo {command.args} {'+'.join(trail)}"

    @features.message(Command("Shout", ignore_case=True))
    async def shout(message: Message, command: CommandObject) -> str:
        return f"shout {command.command}"

    @features.message(Command("bang", prefix="!/"))
    async def bang(message: Message, command: CommandObject) -> str:
        return f"bang {command.prefix}"

    @features.message(CommandStart(deep_link=True))
    async def start_link(message: Message, command: CommandObject) -> str:
        return f"start {command.args}"

    @features.message(CommandStart())
    async def start(message: Message) -> str:
        return "start"

    @features.message(Command("mine"))
    async def mine(message: Message) -> str:
        return "mine"

    @features.message(F.text.startswith("/mine"))
    async def other_command(message: Message) -> str:
        return "other command"

    wrapped = Router(name="wrapped")
    wrapped.message.outer_middleware(Tag("outer"))

    @wrapped.message(F.text.startswith("hello"))
    async def hello(message: Message, trail: tuple[str, ...] = (), handler: Any = None) -> str:
        return f"hello {'+'.join(trail)} {handler.callback.__name__}"

    features.include_router(wrapped)
    dispatcher.include_routers(admin, features)
    run_filters_inline(dispatcher)
    gate_commands(dispatcher)  # read by the lean walk only: aiogram's own walk runs every filter
    return dispatcher


@pytest.mark.parametrize(
    ("user_id", "text", "answer"),
    [
        (ADMIN, "/stats", "stats by admin"),
        (USER, "/stats", UNHANDLED),  # the admin router's own filter refuses it
        (
            USER,
            "/skip now",
            "echo now inner+inner",
        ),  # the first skips (its middleware ran): the next takes it
        (USER, "/echo hi", "echo hi inner"),
        (USER, "hello there", "hello outer+inner hello"),  # outer of its router, inner of its parent
        (USER, "nothing matches", UNHANDLED),
        # Commands: by name, case, prefix, caption, deep link; what no Command takes.
        (USER, "/SHOUT", "shout SHOUT"),
        (USER, "!bang", "bang !"),
        (USER, "/bang", "bang /"),
        (USER, "caption:/echo in a caption", "echo in a caption inner"),
        (USER, "/start ref-42", "start ref-42"),
        (USER, "/start", "start"),
        (USER, "  /mine  ", "mine"),
        (USER, "/mines", "other command"),
        (USER, "/ ", UNHANDLED),
        (USER, "caption:no command", UNHANDLED),
    ],
)
async def test_the_lean_walk_answers_as_aiogram_does(user_id: int, text: str, answer: object) -> None:
    bot = Bot(token=TOKEN)
    try:
        theirs = await _build(Dispatcher()).feed_update(bot, _update(1, user_id, text))
        ours = await _build(LeanDispatcher()).feed_update(bot, _update(1, user_id, text))
    finally:
        await bot.session.close()
    assert theirs == answer
    assert ours == answer


def test_the_aiogram_installed_is_walked_lean() -> None:
    # Else the tests above compare aiogram with itself: the bot would still answer (aiogram walks
    # its routers), but bot/routing.py needs bringing up to this aiogram.
    assert LEAN_WALK


def test_a_dispatchers_command_gates_go_with_it() -> None:
    gc.collect()  # the earlier tests' dispatchers, and their gates, gone first
    before = len(routing._COMMAND_GATES)
    dispatcher = _build(LeanDispatcher())
    assert len(routing._COMMAND_GATES) == before + 8  # the handlers whose first filter is a Command
    del dispatcher
    gc.collect()
    assert len(routing._COMMAND_GATES) == before
