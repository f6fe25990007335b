"""Reading Bot API requests and checking their parameters as Telegram does."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from aisha.sandbox.telegram.constants import (
    _BUTTON_ACTIONS,
    _CALLBACK_DATA_LIMIT,
    _CAPTION_LIMIT,
    _JSON_FIELDS,
    _KEYBOARD_BUTTON_LIMIT,
    _OPT_IN_UPDATES,
    _STRING_FIELDS,
    JsonDict,
)
from aisha.sandbox.telegram.models import StoredFile, _bad_request, _Upload
from aisha.telegram_html import parse_html, utf16_len


async def _read_request(request: web.Request) -> tuple[JsonDict, dict[str, _Upload]]:
    """Parameters from the query string and a JSON, urlencoded or multipart body."""
    raw: JsonDict = {key: _decode_form_value(key, value) for key, value in request.query.items()}
    uploads: dict[str, _Upload] = {}
    if request.method == "POST" and request.can_read_body:
        content_type = request.content_type
        if content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _bad_request("can't parse JSON encoded request") from None
            if not isinstance(body, dict):
                raise _bad_request("JSON object expected")
            raw.update(body)
        elif content_type.startswith("multipart/"):
            fields, uploads = await _read_multipart(await request.multipart())
            raw.update({key: _decode_form_value(key, value) for key, value in fields.items()})
        elif content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            raw.update(
                {key: _decode_form_value(key, value) for key, value in form.items() if isinstance(value, str)}
            )
    return _decode_json_fields(raw), uploads


async def _read_multipart(reader: aiohttp.MultipartReader) -> tuple[dict[str, str], dict[str, _Upload]]:
    fields: dict[str, str] = {}
    uploads: dict[str, _Upload] = {}
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            continue
        data = bytes(await part.read(decode=True))
        if part.filename is not None:
            uploads[part.name] = _Upload(part.filename, part.headers.get(aiohttp.hdrs.CONTENT_TYPE), data)
        else:
            fields[part.name] = data.decode(part.get_charset(default="utf-8"))
    return fields, uploads


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _decode_form_value(key: str, value: str) -> Any:
    """Form values are strings; numbers, booleans and objects arrive JSON-encoded (as aiogram sends them)."""
    if key in _STRING_FIELDS or value.startswith("attach://"):
        return value
    try:
        decoded = json.loads(value, parse_constant=_reject_constant)
    except ValueError:
        return value
    # A JSON string literal was not meant as JSON: keep the text exactly as sent.
    return value if isinstance(decoded, str) else decoded


def _decode_json_fields(params: JsonDict) -> JsonDict:
    for key in _JSON_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str):
            try:
                params[key] = json.loads(value)
            except ValueError:
                raise _bad_request(f"can't parse {key} JSON object") from None
    return params


def _int(params: JsonDict, name: str, default: int | None = None) -> int:
    value = params.get(name)
    if value is None or value == "":
        if default is None:
            raise _bad_request(f"{name} is empty")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid {name} specified") from None


def _float(params: JsonDict, name: str, default: float) -> float:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _bad_request(f"invalid {name} specified") from None


def _str(params: JsonDict, name: str, default: str) -> str:
    value = params.get(name)
    return default if value is None else str(value)


def _bool(params: JsonDict, name: str) -> bool:
    value = params.get(name)
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _chat_id(params: JsonDict) -> int:
    value = params.get("chat_id")
    if value is None or value == "":
        raise _bad_request("chat_id is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        # "@channelusername" chats are not modelled.
        raise _bad_request("chat not found") from None


def _formatted(
    params: JsonDict, text_key: str, entities_key: str
) -> tuple[str | None, list[JsonDict] | None]:
    """Text and entities the way Telegram stores them: explicit entities win over parse_mode, and
    the /commands in the text become bot_command entities, as Telegram finds them by itself."""
    raw = params.get(text_key)
    if raw is None:
        return None, None
    text = str(raw)
    entities = params.get(entities_key)
    if isinstance(entities, list):
        return text, _with_commands(text, entities) or None
    if str(params.get("parse_mode") or "").lower() == "html":
        try:
            plain, parsed = parse_html(text)
        except ValueError as exc:
            raise _bad_request(f"can't parse entities: {exc}") from None
        return plain, _with_commands(plain, parsed) or None
    # Markdown and MarkdownV2 are passed through unparsed.
    return text, _with_commands(text, []) or None


# "/balance" or "/start@aisha_bot", not part of a word, a path ("a/b", "/tmp/x") or a link.
_COMMAND_IN_TEXT_RE = re.compile(r"(?<![\w/@.])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w/@])")
# Telegram finds no command inside these.
_NO_COMMANDS_IN = frozenset({"code", "pre", "url", "text_link", "email"})


def _position(entity: JsonDict) -> tuple[int, int]:
    """Sort key: by offset, the outer (longer) entity first; a malformed entity goes first."""
    offset, length = entity.get("offset"), entity.get("length")
    return (offset if isinstance(offset, int) else 0, -length if isinstance(length, int) else 0)


def _with_commands(text: str, entities: list[JsonDict]) -> list[JsonDict]:
    """``entities`` plus a bot_command entity for every /command outside code and links."""
    if not all(isinstance(entity, dict) for entity in entities):
        return entities  # not Telegram's shape: left as sent
    taken = [
        (entity["offset"], entity["offset"] + entity["length"])
        for entity in entities
        if entity.get("type") in _NO_COMMANDS_IN
        and isinstance(entity.get("offset"), int)
        and isinstance(entity.get("length"), int)
    ]
    commands = []
    for match in _COMMAND_IN_TEXT_RE.finditer(text):
        offset = utf16_len(text[: match.start()])
        length = utf16_len(match[0])
        if not any(start < offset + length and offset < end for start, end in taken):
            commands.append({"type": "bot_command", "offset": offset, "length": length})
    if not commands:
        return entities
    return sorted([*entities, *commands], key=_position)


def _caption_content(params: JsonDict) -> JsonDict:
    caption, entities = _formatted(params, "caption", "caption_entities")
    if not caption:
        return {}
    if utf16_len(caption) > _CAPTION_LIMIT:
        raise _bad_request("message caption is too long")
    content: JsonDict = {"caption": caption}
    if entities:
        content["caption_entities"] = entities
    return content


def _reply_markup(params: JsonDict) -> JsonDict | None:
    markup = params.get("reply_markup")
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _bad_request("object expected as reply markup")
    if "keyboard" in markup:
        _check_reply_keyboard(markup)
    elif "inline_keyboard" in markup:
        _check_inline_keyboard(markup)
    return markup


def _inline_markup(params: JsonDict) -> JsonDict | None:
    markup = _reply_markup(params)
    return markup if markup is not None and "inline_keyboard" in markup else None


def _keyboard_rows(markup: JsonDict, field_name: str, error: str) -> list[list[Any]]:
    rows = markup[field_name]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _bad_request(error)
    if sum(len(row) for row in rows) > _KEYBOARD_BUTTON_LIMIT:
        raise _bad_request("reply markup is too long")
    return rows


def _check_reply_keyboard(markup: JsonDict) -> None:
    rows = _keyboard_rows(markup, "keyboard", 'field "keyboard" must be an Array of Arrays')
    for row in rows:
        for button in row:
            if isinstance(button, dict):
                text = button.get("text")
                if not isinstance(text, str):
                    raise _bad_request('can\'t parse keyboard button: Field "text" must be of type String')
            elif isinstance(button, str):
                text = button
            else:
                raise _bad_request(
                    "can't parse keyboard button: KeyboardButton must be a String or an Object"
                )
            if not text:
                raise _bad_request("keyboard button text must be non-empty")


def _check_inline_keyboard(markup: JsonDict) -> None:
    rows = _keyboard_rows(
        markup,
        "inline_keyboard",
        'field "inline_keyboard" of the InlineKeyboardMarkup must be an Array of Arrays',
    )
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise _bad_request(
                    "can't parse inline keyboard button: InlineKeyboardButton must be an Object"
                )
            text = button.get("text")
            if not isinstance(text, str):
                raise _bad_request('can\'t parse inline keyboard button: Field "text" must be of type String')
            # The Bot API takes an empty url or callback_data for a missing one.
            actions = [key for key in _BUTTON_ACTIONS & button.keys() if button[key] not in ("", None)]
            if not actions:
                raise _bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard"
                )
            if len(actions) > 1:
                # The Bot API documents "exactly one of the optional fields"; the server would
                # silently use one of them and drop the rest.
                raise _bad_request(
                    "can't parse inline keyboard button: exactly one of the optional fields must be used, "
                    f"found {', '.join(sorted(actions))}"
                )
            if not text:
                raise _bad_request("inline keyboard button text must be non-empty")
            data = button.get("callback_data")
            if data is not None and len(str(data).encode()) > _CALLBACK_DATA_LIMIT:
                raise _bad_request("BUTTON_DATA_INVALID")


def _commands_key(scope: Any, language_code: str) -> tuple[str, str]:
    scope_dict = scope if isinstance(scope, dict) and scope else {"type": "default"}
    return json.dumps(scope_dict, sort_keys=True), language_code


def _update_allowed(update: JsonDict, allowed: tuple[str, ...] | None) -> bool:
    kind = next((key for key in update if key != "update_id"), "")
    if allowed:
        return kind in allowed
    return kind not in _OPT_IN_UPDATES


def _api_message(message: JsonDict) -> JsonDict:
    """A stored message without the fake's own bookkeeping keys."""
    result = copy.deepcopy(message)
    result.pop("edited", None)
    return result


def _photo_size(stored: StoredFile, width: int, height: int) -> JsonDict:
    size: JsonDict = {
        "file_id": stored.file_id,
        "file_unique_id": stored.file_unique_id,
        "width": width,
        "height": height,
    }
    if stored.file_size is not None:
        size["file_size"] = stored.file_size
    return size


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
