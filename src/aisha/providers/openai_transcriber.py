"""A :class:`~aisha.transcription.ports.Transcriber` over OpenAI's speech-to-text API.

It uses the official ``openai`` client, so any server speaking the same protocol works through
``base_url`` (a self-hosted faster-whisper, a proxy, the sandbox's fake).

Response formats (https://platform.openai.com/docs/api-reference/audio/createTranscription):
``whisper-1`` (and other Whisper models) can answer ``verbose_json`` with timed segments, which
become the .srt file; ``gpt-4o-transcribe`` and ``gpt-4o-mini-transcribe`` answer only ``json``
(text without timings), so those transcripts come without subtitles.

The client's own retries are off: the pipeline retries a failed chunk itself (429, 5xx,
timeouts), so each attempt is one request and nothing is retried twice over.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal, cast

import openai
from openai import AsyncOpenAI
from openai.types.audio import TranscriptionVerbose

from aisha.closing import Closing
from aisha.transcription.merge import Segment
from aisha.transcription.ports import ChunkResult, TranscriberError

__all__ = ["OpenAITranscriber", "ResponseFormat", "language_code", "response_format_for"]

ResponseFormat = Literal["json", "text", "verbose_json"]

# Statuses worth another try; the same set the openai client retries by itself.
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_KEY_RE = re.compile(r"\b(sk-|key-)[A-Za-z0-9_*\-]{3,}")

# verbose_json names the language in English ("russian"); the rest of the app keeps ISO 639-1.
_LANGUAGE_CODES = {
    "afrikaans": "af",
    "arabic": "ar",
    "armenian": "hy",
    "azerbaijani": "az",
    "belarusian": "be",
    "bosnian": "bs",
    "bulgarian": "bg",
    "catalan": "ca",
    "chinese": "zh",
    "croatian": "hr",
    "czech": "cs",
    "danish": "da",
    "dutch": "nl",
    "english": "en",
    "estonian": "et",
    "finnish": "fi",
    "french": "fr",
    "galician": "gl",
    "georgian": "ka",
    "german": "de",
    "greek": "el",
    "hebrew": "he",
    "hindi": "hi",
    "hungarian": "hu",
    "icelandic": "is",
    "indonesian": "id",
    "italian": "it",
    "japanese": "ja",
    "kannada": "kn",
    "kazakh": "kk",
    "korean": "ko",
    "kyrgyz": "ky",
    "latvian": "lv",
    "lithuanian": "lt",
    "macedonian": "mk",
    "malay": "ms",
    "marathi": "mr",
    "maori": "mi",
    "nepali": "ne",
    "norwegian": "no",
    "persian": "fa",
    "polish": "pl",
    "portuguese": "pt",
    "romanian": "ro",
    "russian": "ru",
    "serbian": "sr",
    "slovak": "sk",
    "slovenian": "sl",
    "spanish": "es",
    "swahili": "sw",
    "swedish": "sv",
    "tagalog": "tl",
    "tajik": "tg",
    "tamil": "ta",
    "tatar": "tt",
    "thai": "th",
    "turkish": "tr",
    "turkmen": "tk",
    "ukrainian": "uk",
    "urdu": "ur",
    "uzbek": "uz",
    "vietnamese": "vi",
    "welsh": "cy",
}


def language_code(value: str | None) -> str | None:
    """An ISO 639-1 code from what a provider reports ("russian", "ru", "RU"), or None."""
    if not value:
        return None
    value = value.strip().lower()
    if value in _LANGUAGE_CODES:
        return _LANGUAGE_CODES[value]
    if re.fullmatch(r"[a-z]{2,3}", value):
        return value
    return None


def response_format_for(model: str) -> ResponseFormat:
    """``verbose_json`` (segments) for Whisper models, ``json`` for the rest (gpt-4o-*transcribe)."""
    return "verbose_json" if "whisper" in model.lower() else "json"


class OpenAITranscriber(Closing):
    """Transcribes one chunk per request through ``AsyncOpenAI().audio.transcriptions.create``."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str = "whisper-1",
        *,
        timeout: float = 300.0,
        response_format: ResponseFormat | None = None,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self._api_key = api_key
        self._model = model
        self._format: ResponseFormat = response_format or response_format_for(model)
        self._client = client or AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )

    @property
    def model(self) -> str:
        return self._model

    @property
    def response_format(self) -> ResponseFormat:
        return self._format

    async def transcribe(self, path: Path, *, language: str | None, prompt: str | None) -> ChunkResult:
        # The SDK reads the file with anyio and names the upload after it (the server tells the
        # format by the extension). A chunk is a few MB at most. Only the response format differs.
        create = functools.partial(
            self._client.audio.transcriptions.create,
            model=self._model,
            file=Path(path),
            language=language or openai.omit,
            prompt=prompt or openai.omit,
        )
        try:
            if self._format == "verbose_json":
                # functools.partial keeps only the SDK's first overload: the verbose type is named.
                verbose = cast(TranscriptionVerbose, await create(response_format="verbose_json"))
                segments = [Segment(float(s.start), float(s.end), s.text) for s in verbose.segments or []]
                return ChunkResult(
                    text=verbose.text, segments=segments, language=language_code(verbose.language)
                )
            if self._format == "text":
                text = await create(response_format="text")
                return ChunkResult(text=str(text).strip())
            plain = await create(response_format="json")
            # Newer models list the detected languages; older SDKs have no such field.
            detected = getattr(plain, "languages", None) or []
            code = getattr(detected[0], "code", None) if detected else None
            return ChunkResult(text=plain.text, language=language_code(code))
        except openai.APIStatusError as exc:
            status = exc.status_code
            raise TranscriberError(
                f"HTTP {status}: {self._redact(_error_message(exc))}",
                retryable=status in _RETRYABLE_STATUSES or status >= 500,
                status=status,
                retry_after=_retry_after(exc),
            ) from exc
        except openai.APITimeoutError as exc:
            raise TranscriberError("the request timed out", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise TranscriberError(f"connection failed: {self._redact(str(exc))}", retryable=True) from exc

    def _redact(self, text: str) -> str:
        # OpenAI's 401 message quotes part of the key; no key goes into a log line or a user's error.
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEY_RE.sub(r"\1***", text)

    async def close(self) -> None:
        await self._client.close()

    aclose = close  # what leaving `async with` calls (Closing)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return exc.message[:300]


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue  # an HTTP date: rare here, and the backoff covers it
        if seconds >= 0:
            return seconds
    return None
