"""The fake OpenAI API's checks of requests, as OpenAI makes them, and its error answers."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import PurePosixPath
from typing import Any

from aiohttp import web

from aisha.sandbox.openai.models import (
    _CHAT_ROLES,
    _ERRORS,
    _GPT4O_FORMATS,
    _IMAGE_DETAILS,
    _MIN_SECONDS,
    _SCHEMA_NAME,
    _SUPPORTED_EXTENSIONS,
    _WHISPER_FORMATS,
    MAX_UPLOAD_BYTES,
    JsonDict,
    TranscriptionRequest,
)


def _spread(text: str, duration: float) -> list[tuple[float, float, str]]:
    """One segment per sentence, laid over ``duration`` in proportion to its length."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s] or [text]
    total = sum(len(s) for s in sentences) or 1
    segments, start = [], 0.0
    for sentence in sentences:
        end = start + duration * len(sentence) / total
        segments.append((round(start, 3), round(end, 3), sentence))
        start = end
    return segments


def _subtitles(segments: list[tuple[float, float, str]], kind: str) -> str:
    """Whisper's ``srt`` or ``vtt`` answer for the segments."""

    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        sec, ms = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{sec:02d}{',' if kind == 'srt' else '.'}{ms:03d}"

    cues = [
        (f"{i}\n" if kind == "srt" else "") + f"{stamp(start)} --> {stamp(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(segments, start=1)
    ]
    return ("WEBVTT\n\n" if kind == "vtt" else "") + "\n".join(cues)


def _too_large(size: int) -> web.Response:
    return _error(413, f"Maximum content size limit ({MAX_UPLOAD_BYTES}) exceeded ({size} bytes read)")


def _error(
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    default_message, kind, default_code = _ERRORS.get(status, ("Error.", "server_error", None))
    body = {
        "error": {
            "message": message or default_message,
            "type": kind,
            "param": param,
            "code": code or default_code,
        }
    }
    return web.json_response(body, status=status, headers=headers)


def chat_image_urls(body: JsonDict) -> list[str]:
    """The ``image_url`` parts of every message, in order."""
    urls: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else None
                urls.append(url if isinstance(url, str) else "")
    return urls


def chat_json_schema(body: JsonDict) -> tuple[str, JsonDict] | None:
    """(name, schema) of a ``response_format`` of type ``json_schema``, else None."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        return None
    return str(spec.get("name", "")), spec["schema"]


def schema_instance(schema: JsonDict, name: str = "value") -> Any:
    """A deterministic value that satisfies a (simple) JSON schema."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {key: schema_instance(sub, key) for key, sub in properties.items() if isinstance(sub, dict)}
    if kind == "array":
        return []
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return 0
    return f"simulated {name}"


def _check_chat(body: JsonDict) -> web.Response | None:
    """What OpenAI checks of a chat request before a model sees it: each message's role and
    content, each content part's shape (an image only from the user, its detail one of
    auto/low/high), the temperature's range, and a json_schema response format."""
    messages = body["messages"]
    if not isinstance(messages, list):
        return _invalid("messages", "Invalid type for 'messages': expected an array.", "invalid_type")
    for i, message in enumerate(messages):
        where = f"messages.[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _CHAT_ROLES:
            return _invalid(
                f"{where}.role",
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
            )
        content = message.get("content")
        if content is None and role != "assistant":
            return _missing(f"{where}.content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            return _invalid(f"{where}.content", f"Invalid type for '{where}.content'.", "invalid_type")
        for j, part in enumerate(content):
            if (problem := _check_part(f"{where}.content.[{j}]", role, part)) is not None:
                return problem
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 2):
        return _invalid(
            "temperature",
            f"Invalid 'temperature': {temperature!r}. Expected a value between 0 and 2.",
            "decimal_above_max_value",
        )
    return _check_json_schema(body.get("response_format"))


def _check_part(where: str, role: str, part: Any) -> web.Response | None:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return None if isinstance(part.get("text"), str) else _missing(f"{where}.text")
    if kind == "image_url":
        if role != "user":
            return _invalid(
                f"{where}.type",
                f"Image URLs are only allowed for messages with role 'user', but this message with role "
                f"'{role}' contains an image URL.",
            )
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            return _missing(f"{where}.image_url.url")
        if "detail" in image and image["detail"] not in _IMAGE_DETAILS:
            return _invalid(
                f"{where}.image_url.detail",
                f"Invalid value: '{image['detail']}'. Supported values are: 'auto', 'low', and 'high'.",
            )
        return None
    if kind in ("input_audio", "file"):
        return None
    return _invalid(
        f"{where}.type",
        f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', "
        "and 'file'.",
    )


def _check_json_schema(response_format: Any) -> web.Response | None:
    """A json_schema response format needs a name and a schema; a strict one, objects that list
    every property as required and allow no others (OpenAI's structured outputs)."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return _missing("response_format.json_schema.name")
    name = spec["name"]
    if not _SCHEMA_NAME.match(name):
        return _invalid(
            "response_format.json_schema.name",
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string "
            "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return _missing("response_format.json_schema.schema")
    if spec.get("strict") is True and (problem := _strict_problem(schema, ())) is not None:
        return _invalid(
            "response_format",
            f"Invalid schema for response_format '{name}': {problem}",
            "invalid_json_schema",
        )
    return None


def _strict_problem(schema: JsonDict, context: tuple[str, ...]) -> str | None:
    where = f"In context={context}, "
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [key for key in properties if key not in (schema.get("required") or [])]
        if missing:
            return (
                where + "'required' is required to be supplied and to be an array including every key "
                f"in properties. Missing '{missing[0]}'."
            )
        for key, sub in properties.items():
            if isinstance(sub, dict) and (problem := _strict_problem(sub, (*context, "properties", key))):
                return problem
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return _strict_problem(schema["items"], (*context, "items"))
    return None


def _missing(param: str) -> web.Response:
    return _error(
        400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid(param: str, message: str, code: str = "invalid_value") -> web.Response:
    return _error(400, message, param=param, code=code)


_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"RIFF")


def _check_image_inputs(body: JsonDict) -> web.Response | None:
    """OpenAI refuses an image part that is neither a URL nor a base64 data URL of an image."""
    for url in chat_image_urls(body):
        if url.startswith(("http://", "https://")):
            continue
        header, _, payload = url.partition(",")
        if not (header.startswith("data:image/") and header.endswith(";base64")):
            return _error(400, "Invalid image URL: expected a URL or a base64 data URL.", param="url")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (ValueError, binascii.Error):
            return _error(400, "Invalid base64 image data.", param="url", code="invalid_image")
        if not raw.startswith(_IMAGE_MAGIC):
            return _error(
                400,
                "You uploaded an unsupported image. Please make sure your image is valid.",
                param="url",
                code="invalid_image_format",
            )
    return None


def _transcription_refusal(call: TranscriptionRequest) -> web.Response | None:
    """OpenAI's refusal of this upload (size, model, response format, file format, length), checked
    in OpenAI's order; None when it passes."""
    if call.size > MAX_UPLOAD_BYTES:
        return _too_large(call.size)
    if not call.model:
        return _error(400, "you must provide a model parameter", param="model")
    if call.response_format not in _WHISPER_FORMATS:
        return _error(
            400,
            f"Invalid value: '{call.response_format}'. Supported values are: 'json', 'text', 'srt', "
            "'verbose_json', and 'vtt'.",
            param="response_format",
            code="invalid_value",
        )
    if "whisper" not in call.model and call.response_format not in _GPT4O_FORMATS:
        return _error(
            400,
            f"response_format '{call.response_format}' is not compatible with model '{call.model}'. "
            "Use 'json' or 'text' instead.",
            param="response_format",
            code="unsupported_value",
        )
    extension = PurePosixPath(call.filename).suffix.lower().lstrip(".")
    if extension not in _SUPPORTED_EXTENSIONS:
        return _error(
            400, f"Invalid file format. Supported formats: {list(_SUPPORTED_EXTENSIONS)}", param="file"
        )
    if call.duration is not None and call.duration < _MIN_SECONDS:
        return _error(
            400, "Audio file is too short. Minimum audio length is 0.1 seconds.", code="audio_too_short"
        )
    return None
