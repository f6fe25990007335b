"""What transcription needs from outside, and what it tells the user through.

- A :class:`Transcriber` hears one chunk of audio (the OpenAI-compatible speech API or a local
  Whisper; ``aisha.providers``).
- A :class:`FileSource` fetches the user's recording (Telegram, through ``aisha.messaging``).
- :class:`TranscriptionEvents` shows the user where their transcript stands and delivers its text
  (``aisha.bot.presenters.transcription``). The events say *what* happened; the presenter owns the
  words, the HTML and the buttons.
- :class:`~aisha.operations.JobFigures` counts failed jobs for the operator.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aisha.operations import JobFigures
from aisha.transcription.merge import Segment

__all__ = [
    "CantHold",
    "CantPayLength",
    "ChunkResult",
    "Conversation",
    "Done",
    "Downloading",
    "Enqueue",
    "Failed",
    "Failure",
    "FileSource",
    "JobFigures",
    "Status",
    "TooLarge",
    "TooLong",
    "Transcriber",
    "TranscriberError",
    "TranscriptionEvents",
    "Working",
]

# Queue the job of a transcript (after the transaction that wrote its row has committed).
Enqueue = Callable[[uuid.UUID], Awaitable[None]]


# ------------------------------------------------------------------------------------ speech


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What a provider heard in one chunk; segment times are relative to the chunk."""

    text: str
    segments: list[Segment] | None = None
    language: str | None = None


class Transcriber(Protocol):
    """A speech-to-text provider for one audio file of at most a few minutes."""

    async def transcribe(self, path: Path, *, language: str | None, prompt: str | None) -> ChunkResult:
        """Transcribe ``path``; raise :class:`TranscriberError` when the provider fails."""
        ...


class TranscriberError(Exception):
    """A provider call failed; ``retryable`` for rate limits, server errors and timeouts."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


# ------------------------------------------------------------------------------------- files


class FileSource(Protocol):
    async def check_download(self, size: int | None) -> None:
        """Raise FileTooLarge or NotEnoughRoom (``aisha.messaging``) for what can't be fetched."""
        ...

    async def download(self, file_id: str, destination: Path, *, max_bytes: int | None = None) -> int: ...


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Conversation:
    """Where a transcript's messages go: the chat, the recording they answer, the one status
    message (None until it is sent) and the user's language (None: the default)."""

    chat_id: int
    reply_to: int | None
    locale: str | None
    status_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class Downloading:
    pass


@dataclass(frozen=True, slots=True)
class Working:
    """Priced and transcribing; ``done`` of ``total`` chunks once there is more than one."""

    duration: float
    price: int
    balance: int
    done: int | None = None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Done:
    duration: float


@dataclass(frozen=True, slots=True)
class Failed:
    """The transcript ended without a text; ``reason`` is the row's error code (``provider_failed``,
    ``no_room``, an audio reason such as ``no_audio``, ``ffmpeg_failed``, ``gave_up``…)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TooLarge:
    """Over what the bot may download: Telegram's limit on the public Bot API, else the operator's."""

    limit: int
    public_api: bool
    reason: str = "too_large"


@dataclass(frozen=True, slots=True)
class TooLong:
    """Longer than the operator allows; ``exact`` False: decoding stopped at ``duration``."""

    duration: float
    limit: float
    exact: bool
    reason: str = "too_long"


@dataclass(frozen=True, slots=True)
class CantHold:
    """Refused for credits before any work: the header's length costs more than the balance."""

    transcript_id: uuid.UUID
    required: int
    balance: int
    shortfall: int
    reason: str = "insufficient_credits"


@dataclass(frozen=True, slots=True)
class CantPayLength:
    """Refused for credits once decoded: the real length costs more than the balance."""

    transcript_id: uuid.UUID
    duration: float
    required: int
    balance: int
    reason: str = "insufficient_credits"


Failure = Failed | TooLarge | TooLong | CantHold | CantPayLength
Status = Downloading | Working | Done | Failure


class TranscriptionEvents(Protocol):
    async def show(self, to: Conversation, status: Status) -> int | None:
        """Show ``status`` in the transcript's one status message: sent when ``to`` has none (its
        id returned), else edited in place (None). May raise: a status is best effort."""
        ...

    async def deliver(self, to: Conversation, text: str) -> None:
        """Send the transcript's text; raises unless every part of it was accepted."""
        ...

    async def send_file(self, to: Conversation, *, name: str, data: bytes) -> None:
        """Send a copy of the text as a file (``transcript.txt``, ``transcript.srt``). May raise."""
        ...

    async def typing(self, to: Conversation) -> None:
        """Show that the bot is at work. May raise."""
        ...
