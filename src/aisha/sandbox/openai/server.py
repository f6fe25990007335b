"""The fake OpenAI API server: transcriptions and chat completions."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox.exchanges import EXCHANGE, Exchange, ExchangeLog, file_note, note_request
from aisha.sandbox.faults import Fault, FaultPlan, never_answer
from aisha.sandbox.openai.checks import (
    _check_chat,
    _check_image_inputs,
    _error,
    _spread,
    _subtitles,
    _too_large,
    _transcription_refusal,
    chat_json_schema,
    schema_instance,
)
from aisha.sandbox.openai.models import (
    _LANGUAGE_NAMES,
    MAX_UPLOAD_BYTES,
    ChatHandler,
    Endpoint,
    FakeTranscript,
    JsonDict,
    StructuredReply,
    TranscriptionRequest,
    TranscriptScript,
    _Failure,
    audio_duration,
    chat_completion,
    log,
)


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
        refusal = _transcription_refusal(call)
        if refusal is not None:
            return refusal
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
