"""aiogram's models are built on first use (aisha.aiogram_models): each one builds, and what they read
and write is the same as when aiogram builds them all at import."""

from __future__ import annotations

import json
import subprocess
import sys

EVERY_MODEL = """
import aisha  # before aiogram: its builds deferred
import aiogram.methods, aiogram.types
from pydantic import BaseModel

models = [
    model
    for module in (aiogram.types, aiogram.methods)
    for name in module.__all__
    if isinstance(model := getattr(module, name), type) and issubclass(model, BaseModel)
]
deferred = sum(not model.__pydantic_complete__ for model in models)
for model in models:
    model.__pydantic_validator__.validate_python  # a first use builds it
print(len(models), deferred, sum(model.__pydantic_complete__ for model in models))
"""

ROUND_TRIP = """
import sys
if sys.argv[1] == "eager":
    import aiogram.types  # built at import, as aiogram does it
import aisha
from aiogram.methods import SendMessage
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Update

update = Update.model_validate({
    "update_id": 7,
    "message": {
        "message_id": 3, "date": 1700000000,
        "chat": {"id": 42, "type": "private", "first_name": "Ann"},
        "from": {"id": 42, "is_bot": False, "first_name": "Ann", "language_code": "ru"},
        "text": "/start ref", "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        "reply_to_message": {"message_id": 2, "date": 1700000000, "chat": {"id": 42, "type": "private"},
                             "photo": [{"file_id": "f", "file_unique_id": "u", "width": 9, "height": 9}]},
    },
})
reply = SendMessage(
    chat_id=42, text="<b>Hi</b>",
    reply_markup=InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text="Go", callback_data="go:1")]]),
)
print(update.model_dump_json(exclude_none=True))
print(repr(reply.model_dump(exclude_none=True)))  # Default sentinels: not JSON until sent
"""


def _run(script: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, timeout=120
    ).stdout


def test_every_aiogram_model_is_deferred_and_builds_on_first_use() -> None:
    total, deferred, built = map(int, _run(EVERY_MODEL).split())
    assert total > 500  # aiogram 3.28 has about 600 types and methods
    assert deferred > total * 0.7  # built at import, as aiogram does it, every one would be
    assert built == total  # every one resolves its names when first used


def test_deferred_models_read_and_write_what_eager_ones_do() -> None:
    deferred, eager = _run(ROUND_TRIP, "deferred"), _run(ROUND_TRIP, "eager")
    assert deferred == eager
    update_json, reply_repr = deferred.splitlines()
    update = json.loads(update_json)
    assert update["message"]["from_user"]["language_code"] == "ru"
    assert update["message"]["reply_to_message"]["photo"][0]["file_id"] == "f"
    assert "'callback_data': 'go:1'" in reply_repr
