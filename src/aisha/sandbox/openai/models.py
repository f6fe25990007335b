"""The fake OpenAI API's recorded requests, scripts, limits and audio lengths."""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("aisha.sandbox.openai")

JsonDict = dict[str, Any]


Endpoint = Literal["transcriptions", "chat"]


MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI: "Maximum content size limit (26214400) exceeded"


_MIN_SECONDS = 0.1


# The docs list flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, webm; the API's own error adds oga.
_SUPPORTED_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")


# What each model answers (API reference, createTranscription `response_format`): the gpt-4o
# transcribe models only json or text; Whisper also subtitles and timed segments.
_WHISPER_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


_GPT4O_FORMATS = ("json", "text")


_CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


_IMAGE_DETAILS = ("auto", "low", "high")


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


_LANGUAGE_NAMES = {
    "en": "english",
    "ru": "russian",
    "uk": "ukrainian",
    "de": "german",
    "fr": "french",
    "es": "spanish",
    "it": "italian",
    "kk": "kazakh",
    "uz": "uzbek",
    "tr": "turkish",
}


_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "model_not_found"),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    413: ("Maximum content size limit (26214400) exceeded.", "invalid_request_error", None),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


@dataclass(frozen=True, slots=True)
class FakeTranscript:
    """A scripted answer; ``segments`` are (start, end, text) in seconds from the upload's start."""

    text: str
    segments: list[tuple[float, float, str]] | None = None
    language: str = "en"


@dataclass(slots=True)
class TranscriptionRequest:
    """One ``/audio/transcriptions`` call as the server saw it (``data`` is dropped once answered)."""

    model: str
    response_format: str
    language: str | None
    prompt: str | None
    filename: str
    content_type: str
    size: int
    sha256: str
    duration: float | None
    fields: dict[str, str]
    data: bytes = field(default=b"", repr=False)
    status: int = 0  # the HTTP status answered
    text: str | None = None  # the transcript answered, when it succeeded
    time: float = 0.0


TranscriptScript = Callable[[TranscriptionRequest], "str | FakeTranscript"]


StructuredReply = JsonDict | Callable[[JsonDict], JsonDict]


ChatHandler = Callable[[JsonDict], "JsonDict | Awaitable[JsonDict]"]


@dataclass(slots=True)
class _Failure:
    endpoint: Endpoint
    status: int
    remaining: int | None  # None: for ever
    when: Callable[[Any], bool] | None
    retry_after: float | None
    message: str | None


def chat_completion(
    content: str, *, model: str = "gpt-4o-mini", completion_id: str = "chatcmpl-fake"
) -> JsonDict:
    """A ``chat.completion`` body with one assistant message, as OpenAI returns it."""
    words = len(content.split())
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words},
    }


def audio_duration(data: bytes, filename: str = "") -> float | None:
    """The length of an OGG (Opus or Vorbis), WAV or MP4/M4A upload from its headers; None for others."""
    if data.startswith(b"OggS"):
        return _ogg_duration(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return _wav_duration(data)
    if data[4:8] == b"ftyp":
        return _mp4_duration(data)
    return None


def _ogg_duration(data: bytes) -> float | None:
    last = data.rfind(b"OggS")
    if last < 0 or last + 14 > len(data):
        return None
    granule: int = struct.unpack_from("<q", data, last + 6)[0]
    segments = data[26] if len(data) > 26 else 0
    first_packet = data[27 + segments : 27 + segments + 19]
    if first_packet.startswith(b"OpusHead") and len(first_packet) >= 12:
        pre_skip: int = struct.unpack_from("<H", first_packet, 10)[0]
        return max(0.0, (granule - pre_skip) / 48_000)  # Opus granules count 48 kHz samples
    if first_packet.startswith(b"\x01vorbis") and len(first_packet) >= 16:
        rate: int = struct.unpack_from("<I", first_packet, 12)[0]
        return granule / rate if rate else None
    return None


def _mp4_boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The boxes between ``start`` and ``end``: type -> (where its body starts, where it ends)."""
    boxes: dict[bytes, tuple[int, int]] = {}
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        if size == 1 and pos + 16 <= end:  # a 64-bit size follows the type
            size, body = struct.unpack_from(">Q", data, pos + 8)[0], pos + 16
        elif size == 0:  # runs to the end
            size = end - pos
        if size < body - pos:
            break
        boxes.setdefault(kind, (body, min(pos + size, end)))
        pos += size
    return boxes


def _mp4_duration(data: bytes) -> float | None:
    """The movie header's duration (``moov/mvhd``): its length in its own time scale."""
    moov = _mp4_boxes(data, 0, len(data)).get(b"moov")
    mvhd = _mp4_boxes(data, *moov).get(b"mvhd") if moov else None
    if mvhd is None or mvhd[1] - mvhd[0] < 32:
        return None
    if data[mvhd[0]] == 1:  # version 1: 64-bit times
        scale, duration = struct.unpack_from(">IQ", data, mvhd[0] + 20)
    else:
        scale, duration = struct.unpack_from(">II", data, mvhd[0] + 12)
    return duration / scale if scale else None


def _wav_duration(data: bytes) -> float | None:
    pos, byte_rate = 12, 0
    size: int
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == b"fmt " and pos + 16 <= len(data):
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        elif chunk_id == b"data":
            size = min(size, len(data) - pos - 8)
            return size / byte_rate if byte_rate else None
        pos += 8 + size + (size & 1)
    return None
