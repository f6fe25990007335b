"""A fake OpenAI HTTP API that the real ``openai`` client talks to.

Tests and the sandbox point ``AsyncOpenAI(base_url=server.base_url)`` at it, so the client's
multipart encoding, response parsing and error mapping run for real. It answers:

- ``POST /v1/audio/transcriptions`` (multipart): ``json``, ``text``, ``verbose_json``, ``srt``
  or ``vtt`` as asked, with the checks OpenAI makes that our code could get wrong (a body over
  25 MB refused with 413 before anything else, a missing file or model, a file format it does not
  take, shorter than 0.1 s, a ``response_format`` the model doesn't answer: the gpt-4o
  transcribe models only ``json`` and ``text``). The text is a deterministic "simulated
  transcript" naming the upload and its length (read from the OGG, WAV or MP4 header), unless a test
  scripts it with ``transcripts``.
- ``POST /v1/chat/completions``: a fixed answer, or whatever ``chat_handler`` builds. Requests are
  checked as OpenAI checks them: message roles and contents, content part shapes, images only
  from the user, with ``detail`` auto/low/high, as http(s) URLs or base64 data URLs of a real
  image; the temperature's range; a ``json_schema`` response format's name and, when strict,
  objects that require every property and allow no others. Structured output is answered with
  the JSON that ``structured_replies[<schema name>]`` gives (a dict, or a callable of the body),
  else with a deterministic instance of the schema.

Failures are scripted with :meth:`FakeOpenAIServer.fail_next` and :meth:`fail_always`, and every
call is recorded. It runs inside the caller's event loop (``aiohttp.web``); nothing here blocks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import inspect
import itertools
import json
import logging
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from aiohttp import web

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox.exchanges import EXCHANGE, Exchange, ExchangeLog, file_note, note_request
from aisha.sandbox.faults import Fault, FaultPlan, never_answer

__all__ = [
    "ChatHandler",
    "FakeOpenAIServer",
    "FakeTranscript",
    "StructuredReply",
    "TranscriptScript",
    "TranscriptionRequest",
    "audio_duration",
    "chat_completion",
    "chat_image_urls",
    "chat_json_schema",
    "schema_instance",
]

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- audio durations


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


# ------------------------------------------------------------------------------------- server


class FakeOpenAIServer(LoopbackServer):
    """An in-process OpenAI API: ``async with FakeOpenAIServer() as server``, then
    ``AsyncOpenAI(api_key="x", base_url=server.base_url)``.

    ``api_key``, when given, is the only key accepted (others get 401). ``transcripts`` scripts
    the transcription texts: a list consumed one per successful call, or a callable of the
    :class:`TranscriptionRequest`; ``delay`` (seconds, or a callable of the request) slows
    answers down to exercise concurrency; ``chat_handler`` builds chat completion bodies.
    ``transcripts`` and ``structured_replies`` may also be given here (the sandbox does).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        transcripts: TranscriptScript | None = None,
        structured_replies: dict[str, StructuredReply] | None = None,
    ) -> None:
        self._api_key = api_key
        super().__init__(host=host, port=port)
        self._failures: list[_Failure] = []
        self.faults = FaultPlan("openai", by_fragment=True)  # fail_nth: the n-th matching request fails
        self._ids = itertools.count(1)

        self.transcripts: list[str | FakeTranscript] | TranscriptScript | None = transcripts
        self.delay: float | Callable[[TranscriptionRequest], float] = 0.0
        self.chat_handler: ChatHandler | None = None
        self.chat_reply = "Simulated answer."
        # Structured output by json_schema name (see _structured_answer).
        self.structured_replies: dict[str, StructuredReply] = dict(structured_replies or {})
        self.transcription_calls: list[TranscriptionRequest] = []
        self.chat_calls: list[JsonDict] = []
        # Every call with its body and answer, for the sandbox panel.
        self.exchanges = ExchangeLog()
        # Unexpected exceptions inside the fake itself: tests can assert this stays empty.
        self.errors: list[str] = []

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES + 1024 * 1024, middlewares=[self._guard])
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/chat/completions", self._chat)
        await self._listen(app, handler_cancellation=True)

    async def stop(self) -> None:
        if self._runner is None:
            return
        await self._close()

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``: the value for ``AsyncOpenAI(base_url=...)`` / OPENAI_BASE_URL."""
        return self._root_url() + "/v1"

    # ------------------------------------------------------------------------------- scripting

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        endpoint: Endpoint = "transcriptions",
        when: Callable[[Any], bool] | None = None,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``n`` calls of ``endpoint`` (those matching ``when``) with ``status``.

        ``when`` receives the :class:`TranscriptionRequest`, or the JSON body of a chat call.
        ``retry_after`` adds a Retry-After header (seconds).
        """
        self._failures.append(_Failure(endpoint, status, n, when, retry_after, message))

    def fail_always(
        self,
        status: int = 500,
        *,
        endpoint: Endpoint = "transcriptions",
        when: Callable[[Any], bool] | None = None,
        message: str | None = None,
    ) -> None:
        """Answer every call of ``endpoint`` (matching ``when``) with ``status`` until cleared."""
        self._failures.append(_Failure(endpoint, status, None, when, None, message))

    def fail_nth(self, endpoint: str, fault: Fault, n: int = 1) -> None:
        """The ``n``-th request from now whose path contains ``endpoint`` (``"transcriptions"``,
        ``"chat/completions"``) fails with ``fault``."""
        self.faults.add(endpoint, fault, n)

    def clear_failures(self) -> None:
        self._failures.clear()
        self.faults.clear()

    def calls_for(self, filename: str) -> list[TranscriptionRequest]:
        """The transcription calls that uploaded a file of this name."""
        return [call for call in self.transcription_calls if call.filename == filename]

    # -------------------------------------------------------------------------------- handlers

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        exchange = self.exchanges.add_request(request)
        response = await self._answer(request, handler, exchange)
        exchange.answered(response)
        return response

    async def _answer(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        exchange: Exchange,
    ) -> web.StreamResponse:
        if self._api_key is not None and request.headers.get("Authorization") != f"Bearer {self._api_key}":
            return _error(401, "Incorrect API key provided.")
        fault = self.faults.take(request.path)
        if fault is not None:
            exchange.summary = f"injected fault: {fault.value}"
            if fault.status is None:
                return await never_answer(request, fault)
            return _error(fault.status, f"injected fault: {fault.value}")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:  # aiohttp's own limit: answered in OpenAI's shape
            return _too_large(request.content_length or MAX_UPLOAD_BYTES + 1)
        except web.HTTPException as exc:
            exchange.status, exchange.response = exc.status, exc.text
            raise
        except Exception as exc:
            log.exception("fake OpenAI server failed")
            self.errors.append(f"{request.path}: {type(exc).__name__}: {exc}")
            return _error(500, f"fake server error: {exc}")

    def _scripted_failure(self, endpoint: Endpoint, subject: Any) -> web.Response | None:
        for failure in self._failures:
            if failure.endpoint != endpoint or failure.remaining == 0:
                continue
            if failure.when is not None and not failure.when(subject):
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
            headers = {"retry-after": f"{failure.retry_after:g}"} if failure.retry_after is not None else None
            return _error(failure.status, failure.message, headers=headers)
        return None

    async def _transcriptions(self, request: web.Request) -> web.Response:
        # OpenAI's edge refuses a request body over its limit before looking at any field.
        if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
            return _too_large(request.content_length)
        form = await request.post()
        upload = form.get("file")
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        if not isinstance(upload, web.FileField):
            return _error(400, "You must provide a file.", param="file")
        data = await asyncio.to_thread(upload.file.read)  # aiohttp spooled it to a temp file
        call = TranscriptionRequest(
            model=fields.get("model", ""),
            response_format=fields.get("response_format", "json"),
            language=fields.get("language") or None,
            prompt=fields.get("prompt") or None,
            filename=upload.filename,
            content_type=upload.content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            duration=audio_duration(data, upload.filename),
            fields=fields,
            data=data,
            time=time.time(),
        )
        try:
            response = await self._answer_transcription(call)
        finally:
            call.data = b""  # records stay small however many uploads a sandbox session sees
            self.transcription_calls.append(call)
            length = "" if call.duration is None else f", {call.duration:.1f} s"
            request[EXCHANGE].summary = f"{call.filename}{length}"
            note_request(request, {**fields, "file": file_note(call.content_type, call.size)})
        call.status = response.status
        return response

    async def _answer_transcription(self, call: TranscriptionRequest) -> web.Response:
        delay = self.delay(call) if callable(self.delay) else self.delay
        if delay > 0:
            await asyncio.sleep(delay)
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
        if (failure := self._scripted_failure("transcriptions", call)) is not None:
            return failure

        transcript = self._script(call)
        call.text = transcript.text
        duration = call.duration if call.duration is not None else 0.4 * max(1, len(transcript.text.split()))
        if call.response_format == "text":
            return web.Response(text=transcript.text + "\n", content_type="text/plain")
        usage: JsonDict
        if "whisper" in call.model:
            usage = {"type": "duration", "seconds": math.ceil(duration)}
        else:
            tokens = len(transcript.text.split())
            usage = {
                "type": "tokens",
                "input_tokens": 50,
                "output_tokens": tokens,
                "total_tokens": 50 + tokens,
            }
        if call.response_format == "json":
            return web.json_response({"text": transcript.text, "usage": usage})
        segments = transcript.segments or _spread(transcript.text, duration)
        if call.response_format in ("srt", "vtt"):
            return web.Response(text=_subtitles(segments, call.response_format), content_type="text/plain")
        language = call.language or transcript.language
        return web.json_response(
            {
                "task": "transcribe",
                "language": _LANGUAGE_NAMES.get(language, language),
                "duration": duration,
                "text": transcript.text,
                "segments": [
                    {
                        "id": i,
                        "seek": 0,
                        "start": start,
                        "end": end,
                        "text": " " + text,
                        "tokens": [],
                        "temperature": 0.0,
                        "avg_logprob": -0.2,
                        "compression_ratio": 1.2,
                        "no_speech_prob": 0.01,
                    }
                    for i, (start, end, text) in enumerate(segments)
                ],
                "usage": usage,
            }
        )

    def _script(self, call: TranscriptionRequest) -> FakeTranscript:
        script = self.transcripts
        answer: str | FakeTranscript | None = None
        if callable(script):
            answer = script(call)
        elif script:
            answer = script.pop(0)
        if answer is None:
            length = f"{call.duration:.1f} seconds" if call.duration is not None else "an unknown length"
            answer = f"Simulated transcript of {call.filename}, {length} of audio ({call.sha256[:8]})."
        return answer if isinstance(answer, FakeTranscript) else FakeTranscript(answer)

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not body.get("model") or not body.get("messages"):
            return _error(400, "'model' and 'messages' are required properties.")
        self.chat_calls.append(body)
        note_request(request, body)
        schema = chat_json_schema(body)
        request[EXCHANGE].summary = schema[0] if schema else str(body["model"])
        if body.get("stream"):
            return _error(400, "streaming is not supported by this fake")
        if (failure := self._scripted_failure("chat", body)) is not None:
            return failure
        if (invalid := _check_chat(body)) is not None:
            return invalid
        if (invalid := _check_image_inputs(body)) is not None:
            return invalid
        if self.chat_handler is not None:
            answer = self.chat_handler(body)
            if inspect.isawaitable(answer):
                answer = await answer
            return web.json_response(answer)
        if (structured := self._structured_answer(body)) is not None:
            return web.json_response(structured)
        return web.json_response(
            chat_completion(
                self.chat_reply, model=str(body["model"]), completion_id=f"chatcmpl-fake-{next(self._ids)}"
            )
        )

    # ---------------------------------------------------- chat: structured output (json_schema)

    def _structured_answer(self, body: JsonDict) -> JsonDict | None:
        """A completion whose content is JSON for the requested schema; None if none was requested."""
        found = chat_json_schema(body)
        if found is None:
            return None
        name, schema = found
        reply = self.structured_replies.get(name)
        content = reply(body) if callable(reply) else reply
        if content is None:
            content = schema_instance(schema)
        return chat_completion(
            json.dumps(content, ensure_ascii=False),
            model=str(body["model"]),
            completion_id=f"chatcmpl-fake-{next(self._ids)}",
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


# ------------------------------------------------------ chat: image inputs and structured output


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
