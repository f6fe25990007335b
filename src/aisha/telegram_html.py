"""Telegram's HTML parse mode, ported from TDLib: what the fake Bot API refuses, and what the bot
checks before it queues a text written by hand (an admin's broadcast) that Telegram would refuse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JsonDict = dict[str, Any]
TEXT_LIMIT = 4096  # a message's text once its entities are parsed, in UTF-16 code units

# Telegram's HTML parse mode, ported from TDLib's ``parse_html`` (td/telegram/MessageEntity.cpp),
# which the Bot API server runs: the same tags, the same character references, and the same error
# texts with the same byte offsets. A bare ``&`` or ``>`` is kept as it is; a ``<`` is always the
# start of a tag, so unescaped user text with a ``<`` in it is refused, as in production.
_HTML_TAG_NAMES = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "tg-time",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)
_HTML_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "code": "code",
    "blockquote": "blockquote",
}
_NAMED_REFS = {b"lt": "<", b"gt": ">", b"amp": "&", b"quot": '"'}
_HTML_SPACES = frozenset(b" \t\r\n\v\0")


@dataclass(slots=True)
class _OpenTag:
    name: str
    argument: str
    offset: int  # UTF-16 offset of the tag's text
    text_start: int  # index in the output where the tag's text starts


def _html_space(byte: int) -> bool:
    return byte in _HTML_SPACES


def _html_alpha(byte: int) -> bool:
    return 0x61 <= (byte | 0x20) <= 0x7A


def _html_digit(byte: int) -> bool:
    return 0x30 <= byte <= 0x39


def _decode_html_entity(data: bytes, pos: int) -> tuple[int, int]:
    """The code point of the character reference at ``data[pos] == '&'`` and the index after it;
    code 0 when it is none (then the ``&`` is kept as text)."""
    at = _byte_at(data)
    end = pos + 1
    code = 0
    if at(end) == 0x23:  # '#'
        end += 1
        if at(end) == 0x78:  # 'x'
            end += 1
            while at(end) and chr(at(end)) in "0123456789abcdefABCDEF":
                code = code * 16 + int(chr(at(end)), 16)
                end += 1
        else:
            while _html_digit(at(end)):
                code = code * 10 + at(end) - 0x30
                end += 1
        if code == 0 or code >= 0x10FFFF or end - pos >= 10:
            return 0, pos
    else:
        while _html_alpha(at(end)):
            end += 1
        name = _NAMED_REFS.get(data[pos + 1 : end])
        if name is None:
            return 0, pos
        code = ord(name)
    return code, end + 1 if at(end) == 0x3B else end  # ';' is optional


def _byte_at(data: bytes) -> Callable[[int], int]:
    size = len(data)
    return lambda index: data[index] if index < size else 0


def parse_html(source: str) -> tuple[str, list[JsonDict]]:
    """Telegram's HTML parse mode: plain text plus MessageEntity dicts (UTF-16 offsets).

    Raises ValueError with Telegram's own message (unsupported or unclosed tags, mismatched end
    tags, a ``<`` that starts no tag) so bots that forget to escape user input fail here as they
    would in production.
    """
    data = source.encode("utf-8", "surrogatepass")
    at = _byte_at(data)
    out = bytearray()
    utf16 = 0
    stack: list[_OpenTag] = []
    entities: list[JsonDict] = []
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x26:  # '&'
            code, after = _decode_html_entity(data, i)
            if code:
                out += chr(code).encode("utf-8", "surrogatepass")
                utf16 += 2 if code > 0xFFFF else 1
                i = after
                continue
        if c != 0x3C:  # '<'
            if c & 0xC0 != 0x80:  # the first byte of a character
                utf16 += 2 if c >= 0xF0 else 1
            out.append(c)
            i += 1
            continue
        begin = i
        i += 1
        if at(i) != 0x2F:  # a start tag
            while not _html_space(at(i)) and at(i) != 0x3E:
                i += 1
            if at(i) == 0:
                raise ValueError(f"Unclosed start tag at byte offset {begin}")
            name = data[begin + 1 : i].decode("utf-8", "replace").lower()
            if name not in _HTML_TAG_NAMES:
                raise ValueError(f'Unsupported start tag "{name}" at byte offset {begin}')
            argument, i = _html_attributes(data, i, name, begin)
            if name == "span" and argument != "spoiler":
                raise ValueError(f'Tag "span" must have class "tg-spoiler" at byte offset {begin}')
            stack.append(_OpenTag(name, argument, utf16, len(out)))
            i += 1  # '>'
            continue
        # an end tag
        if not stack:
            raise ValueError(f"Unexpected end tag at byte offset {begin}")
        while not _html_space(at(i)) and at(i) != 0x3E:
            i += 1
        end_name = data[begin + 2 : i].decode("utf-8", "replace").lower()
        while _html_space(at(i)) and at(i) != 0:
            i += 1
        if at(i) != 0x3E:
            raise ValueError(f"Unclosed end tag at byte offset {begin}")
        i += 1
        tag = stack.pop()
        if end_name and end_name != tag.name:
            raise ValueError(
                f'Unmatched end tag at byte offset {begin}, expected "</{tag.name}>", found "</{end_name}>"'
            )
        if utf16 > tag.offset:
            _close_html_tag(tag, utf16 - tag.offset, bytes(out[tag.text_start :]), entities)
    if stack:
        raise ValueError(f'Can\'t find end tag corresponding to start tag "{stack[-1].name}"')
    for entity in entities:
        if entity["type"] == "code":
            entity.pop("language", None)
    entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
    return out.decode("utf-8", "surrogatepass"), entities


def _html_attributes(data: bytes, i: int, tag: str, begin: int) -> tuple[str, int]:
    """Read a start tag's attributes from ``i`` up to its ``>``; return the tag's argument (the
    link, the language, the spoiler class, ...) and the index of the ``>``."""
    at = _byte_at(data)
    argument = ""
    while at(i) != 0x3E:
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) == 0x3E:
            break
        name_begin = i
        while not _html_space(at(i)) and at(i) not in b"=>/\"'":
            i += 1
        attribute = data[name_begin:i].decode("utf-8", "replace")
        if not attribute:
            raise ValueError(f'Empty attribute name in the tag "{tag}" at byte offset {begin}')
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) != 0x3D:  # '='
            if at(i) == 0:
                raise ValueError(f'Unclosed start tag "{tag}" at byte offset {begin}')
            if tag == "blockquote" and attribute == "expandable":
                argument = "1"
            continue
        i += 1
        while at(i) != 0 and _html_space(at(i)):
            i += 1
        if at(i) == 0:
            raise ValueError(f'Unclosed start tag "{tag}" at byte offset {begin}')
        if at(i) not in b"\"'":
            token_begin = i
            while _html_alpha(at(i)) or _html_digit(at(i)) or at(i) in b".-":
                i += 1
            value = data[token_begin:i].decode().lower()
            if not _html_space(at(i)) and at(i) != 0x3E:
                raise ValueError(f"Unexpected end of name token at byte offset {token_begin}")
        else:
            quote = at(i)
            i += 1
            raw = bytearray()
            while at(i) != quote and at(i) != 0:
                if at(i) == 0x26:
                    code, after = _decode_html_entity(data, i)
                    if code:
                        raw += chr(code).encode("utf-8", "surrogatepass")
                        i = after
                        continue
                raw.append(at(i))
                i += 1
            if at(i) == quote:
                i += 1
            value = raw.decode("utf-8", "surrogatepass")
        if at(i) == 0:
            raise ValueError(f"Unclosed start tag at byte offset {begin}")
        if tag == "a" and attribute == "href":
            argument = value
        elif tag == "code" and attribute == "class" and value.startswith("language-"):
            argument = value.removeprefix("language-")
        elif tag == "span" and attribute == "class" and value.startswith("tg-"):
            argument = value.removeprefix("tg-")
        elif (tag == "tg-emoji" and attribute == "emoji-id") or (
            tag == "blockquote" and attribute == "expandable"
        ):
            argument = value or "1"
    return argument, i


def _close_html_tag(tag: _OpenTag, length: int, text: bytes, entities: list[JsonDict]) -> None:
    entity: JsonDict = {"type": _HTML_ENTITY_TYPES.get(tag.name, ""), "offset": tag.offset, "length": length}
    last = entities[-1] if entities else None
    same_span = last is not None and (last["offset"], last["length"]) == (tag.offset, length)
    if tag.name == "tg-emoji":
        if not tag.argument.isdigit() or int(tag.argument) == 0:
            raise ValueError("Invalid custom emoji identifier specified")
        entity.update(type="custom_emoji", custom_emoji_id=tag.argument)
    elif tag.name == "tg-time":
        return  # a formatted date: not modelled
    elif tag.name == "a":
        url = tag.argument or text.decode("utf-8", "surrogatepass")
        if not url.strip():
            return  # Telegram keeps the text and drops a link it can't use
        entity.update(type="text_link", url=url)
    elif tag.name == "blockquote" and tag.argument:
        entity["type"] = "expandable_blockquote"
    elif tag.name == "pre":
        if same_span and last is not None and last["type"] == "code" and last.get("language"):
            last["type"] = "pre"  # <pre><code class="language-x"> is one pre entity with a language
            return
        entity["type"] = "pre"
    elif tag.name == "code":
        if same_span and last is not None and last["type"] == "pre" and tag.argument:
            last["language"] = tag.argument
            return
        if tag.argument:
            entity["language"] = tag.argument
    entities.append(entity)


def utf16_len(text: str) -> int:
    """Telegram measures texts, entity offsets and lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def html_refusal(text: str) -> str | None:
    """Why sendMessage with parse_mode HTML would refuse `text`, in Telegram's words; None if it
    would be sent."""
    try:
        plain, _ = parse_html(text)
    except ValueError as error:
        return f"can't parse entities: {error}"
    if not plain.strip():
        return "message text is empty"
    if utf16_len(plain) > TEXT_LIMIT:
        return "message is too long"
    return None
