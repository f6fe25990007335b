"""Transcribing a recording: cut into chunks by ffmpeg, chunks sent concurrently, texts merged.

The provider is any :class:`Transcriber` (see :mod:`aisha.transcription.ports`).

Concurrency and continuity. Whisper reads a ``prompt`` (the text said just before) to keep names,
spelling and punctuation consistent across a cut; waiting for chunk i-1 before sending chunk i
would make a one-hour file take twelve sequential requests. So chunks go out concurrently, at most
``concurrency`` at a time and in order, and each request carries the tail of the previous chunk's
text *if that text is already known when the request is made* (a retry looks again). With
concurrency K the first K chunks go without it; every later chunk starts when a slot frees up,
which is usually after its predecessor has finished, so most chunks get it. ``concurrency=1`` is
fully sequential with full continuity; the cost of the compromise is that the prompt a chunk saw
may differ from run to run. Chunks cut at silences start at a pause, where a missing prompt costs
least; hard cuts repeat two seconds of audio and are de-duplicated by the merge.

Failures. A chunk whose request fails with 429, a 5xx, a timeout or a lost connection is retried
with exponential backoff and jitter (honouring Retry-After), alone: the other chunks keep their
results. A permanent failure (any other error, or retries used up) cancels the remaining requests
and raises :class:`TranscriptionFailed`. Audio problems raise :class:`~aisha.transcription.audio.AudioError`
before any request is made.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aisha.transcription.audio import (
    AudioChunk,
    AudioConfig,
    AudioInfo,
    ChunkPlan,
    PreparedAudio,
    prepare_audio,
    probe,
)
from aisha.transcription.merge import (
    TELEGRAM_TEXT_LIMIT,
    ChunkText,
    Segment,
    build_srt,
    join_chunk_texts,
    merge_segments,
    split_message,
)
from aisha.transcription.ports import ChunkResult, Transcriber, TranscriberError

__all__ = [
    "ChunkResult",
    "LanguageNotSupported",
    "ProgressCallback",
    "RetryPolicy",
    "Segment",
    "Transcriber",
    "TranscriberError",
    "Transcription",
    "TranscriptionFailed",
    "TranscriptionPipeline",
    "prompt_tail",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], Awaitable[None]]


class TranscriptionFailed(Exception):
    """The provider failed for good on a chunk; nothing was produced and the user should be refunded."""

    def __init__(self, message: str, *, chunk_index: int, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.chunk_index = chunk_index
        self.attempts = attempts
        self.status = status


class LanguageNotSupported(TranscriptionFailed):
    """The recognizer cannot transcribe this language (an English-only local model asked for
    Russian, say); raised before any chunk is sent, and the user should be refunded."""

    def __init__(self, language: str, *, model: str | None = None) -> None:
        super().__init__(f"{model or 'the model'} cannot transcribe {language!r}", chunk_index=0, attempts=0)
        self.language = language
        self.model = model


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    # A server's Retry-After is obeyed up to this long, even past max_delay.
    max_retry_after: float = 60.0
    # A request that hangs longer than this is abandoned and counts as a (retryable) timeout.
    attempt_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_delay < 0 or self.max_delay < 0 or self.attempt_timeout <= 0:
            raise ValueError("invalid retry policy")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        # Jitter: chunks that hit a rate limit together must not come back together.
        delay *= random.uniform(0.75, 1.25)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    segments: list[Segment] | None
    language: str | None
    duration: float
    chunks: tuple[ChunkPlan, ...]
    attempts: int  # provider calls made, retries included
    audio_seconds: float  # audio sent in successful calls (overlaps included): what providers bill

    @property
    def srt(self) -> str | None:
        """SubRip subtitles, when the provider gave segments (whisper-1 does, gpt-4o models don't)."""
        return build_srt(self.segments) if self.segments is not None else None

    def messages(self, limit: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
        """The text split into Telegram messages, at sentence ends where possible."""
        return split_message(self.text, limit)


_PROMPT_TOLERANCE = 0.25  # seconds a segment may end past the next chunk's start and still prompt it
_TRAILING_ELLIPSIS = re.compile(r"\s*(?:\.{2,}|…)\s*$")


def prompt_tail(text: str, max_chars: int) -> str:
    """The last ``max_chars`` characters of ``text``, starting at a word boundary. A trailing
    ellipsis (a sentence cut off at the chunk's end) is dropped: a model would carry it on."""
    text = _TRAILING_ELLIPSIS.sub("", text.strip())
    if len(text) <= max_chars:
        return text
    tail = text[-max_chars:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail


class TranscriptionPipeline:
    """Turns an audio or video file into a :class:`Transcription` through a :class:`Transcriber`."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        audio: AudioConfig | None = None,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        prompt_chars: int = 400,  # whisper keeps only the last 224 tokens of a prompt anyway
        work_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._transcriber = transcriber
        self._audio = audio or AudioConfig()
        self._concurrency = concurrency
        self._retry = retry or RetryPolicy()
        self._prompt_chars = prompt_chars
        self._work_root = None if work_root is None else str(work_root)

    @property
    def audio_config(self) -> AudioConfig:
        return self._audio

    async def probe(self, path: str | os.PathLike[str]) -> AudioInfo:
        """Refuse a file that cannot be transcribed, before any charge; its header's duration is a claim."""
        return await probe(path, config=self._audio)

    async def transcribe(
        self,
        path: str | os.PathLike[str],
        *,
        language: str | None = None,
        prompt: str | None = None,
        on_progress: ProgressCallback | None = None,
        info: AudioInfo | None = None,
    ) -> Transcription:
        """Transcribe the file at ``path``.

        ``language`` is an ISO-639-1 hint (None: detect), ``prompt`` a vocabulary or context hint
        sent with every chunk, ``on_progress(done, total)`` is awaited after each chunk (1..N of N),
        ``info`` a probe result already at hand. Work files live in a temporary directory that is
        removed at the end, whatever happens.
        """
        work = await asyncio.to_thread(tempfile.mkdtemp, prefix="aisha-transcribe-", dir=self._work_root)
        try:
            prepared = await self.prepare(path, work, info=info)
            return await self.transcribe_prepared(
                prepared, language=language, prompt=prompt, on_progress=on_progress
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def prepare(
        self, path: str | os.PathLike[str], work_dir: str | os.PathLike[str], *, info: AudioInfo | None = None
    ) -> PreparedAudio:
        """Decode the file into chunks under ``work_dir``, with no provider call yet.

        ``duration`` of the result is the decoded, real length: what a caller should charge for
        before calling :meth:`transcribe_prepared`, whatever the file's header claimed.
        """
        return await prepare_audio(path, work_dir, config=self._audio, info=info)

    async def transcribe_prepared(
        self,
        prepared: PreparedAudio,
        *,
        language: str | None = None,
        prompt: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Transcription:
        """Send the chunks of :meth:`prepare` to the provider and merge what it heard; a language
        the recognizer can't handle is refused before the first chunk."""
        await self._check_language(language)
        results, attempts = await self._transcribe_chunks(
            prepared.chunks, language=language, prompt=prompt, on_progress=on_progress
        )
        texts = [
            ChunkText(r.text, start=c.start, overlap=c.plan.overlap, segments=r.segments)
            for c, r in zip(prepared.chunks, results, strict=True)
        ]
        detected = next((r.language for r in results if r.language), None)
        return Transcription(
            text=join_chunk_texts(texts),
            segments=merge_segments(texts),
            language=language or detected,
            duration=prepared.duration,
            chunks=tuple(c.plan for c in prepared.chunks),
            attempts=attempts,
            audio_seconds=sum(c.plan.duration for c in prepared.chunks),
        )

    async def _check_language(self, language: str | None) -> None:
        """A recognizer that knows its languages (a local model) refuses others before any work."""
        supports = getattr(self._transcriber, "supports_language", None)
        if supports is None:
            return
        try:
            supported = await supports(language)
        except Exception as exc:  # the model could not even be loaded
            raise TranscriptionFailed(f"the recognizer failed: {exc}", chunk_index=0, attempts=1) from exc
        if supported:
            return
        raise LanguageNotSupported(language or "?", model=getattr(self._transcriber, "model", None))

    async def _transcribe_chunks(
        self,
        chunks: Sequence[AudioChunk],
        *,
        language: str | None,
        prompt: str | None,
        on_progress: ProgressCallback | None,
    ) -> tuple[list[ChunkResult], int]:
        total = len(chunks)
        results: list[ChunkResult | None] = [None] * total
        # asyncio.Semaphore wakes waiters first-in first-out, so chunks start in order.
        slots = asyncio.Semaphore(self._concurrency)
        progress_lock = asyncio.Lock()
        done = 0
        attempts = 0

        def prompt_for(index: int) -> str | None:
            previous = results[index - 1] if index > 0 else None
            tail = prompt_tail(said_before(index, previous), self._prompt_chars) if previous else ""
            joined = " ".join(p for p in (prompt or "", tail) if p.strip())
            return joined or None

        def said_before(index: int, previous: ChunkResult) -> str:
            """The previous chunk's text said before this chunk starts. After a hard cut this one
            hears the overlap again: a prompt ending in those words (often garbled at the cut)
            makes a model take them as already said and skip what follows."""
            plan = chunks[index].plan
            if plan.overlap <= 0 or not previous.segments:
                return previous.text
            limit = plan.start - chunks[index - 1].start + _PROMPT_TOLERANCE
            return " ".join(s.text.strip() for s in previous.segments if s.end <= limit)

        async def run(chunk: AudioChunk) -> None:
            nonlocal done, attempts
            async with slots:
                for attempt in range(1, self._retry.max_attempts + 1):
                    attempts += 1
                    try:
                        async with asyncio.timeout(self._retry.attempt_timeout):
                            result = await self._transcriber.transcribe(
                                chunk.path, language=language, prompt=prompt_for(chunk.index)
                            )
                        break
                    except Exception as exc:
                        error = _classify(exc)
                        if not error.retryable or attempt == self._retry.max_attempts:
                            raise TranscriptionFailed(
                                f"chunk {chunk.index + 1} of {total} failed after {attempt} attempt(s): {error}",
                                chunk_index=chunk.index,
                                attempts=attempt,
                                status=error.status,
                            ) from exc
                        delay = self._retry.delay(attempt, error.retry_after)
                        log.warning(
                            "transcription chunk %d/%d failed (%s), retry %d in %.1f s",
                            chunk.index + 1,
                            total,
                            error,
                            attempt,
                            delay,
                        )
                        await asyncio.sleep(delay)
                # Set before the slot is freed, so the chunk that takes the slot sees this text.
                results[chunk.index] = result
            async with progress_lock:  # callbacks in order: 1, 2, ... N
                done += 1
                await _report(on_progress, done, total)

        tasks = [asyncio.create_task(run(chunk)) for chunk in chunks]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One chunk failed for good (or we were cancelled): the others are of no use now.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for r in results if r is not None], attempts


def _classify(exc: Exception) -> TranscriberError:
    if isinstance(exc, TranscriberError):
        return exc
    if isinstance(exc, TimeoutError):
        return TranscriberError("the request timed out", retryable=True)
    # A bug or an unknown provider error: retrying would repeat it.
    return TranscriberError(f"{type(exc).__name__}: {exc}", retryable=False)


async def _report(on_progress: ProgressCallback | None, done: int, total: int) -> None:
    if on_progress is None:
        return
    try:
        await on_progress(done, total)
    except Exception:
        # A progress message that cannot be edited must not cost the user a paid transcript.
        log.exception("progress callback failed")
