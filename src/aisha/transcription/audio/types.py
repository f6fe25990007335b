"""The audio side's values: limits, errors, what a probe and a cut produce."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

MIN_AUDIO_SECONDS = 0.1

# The demuxers of real recordings (ffmpeg's short names; "mov" covers mp4/m4a/3gp, "matroska"
# webm). Never a demuxer that opens other files or URLs (hls, concat, dash, image2, sdp, …).
ALLOWED_DEMUXERS = (
    "aac",
    "aiff",
    "amr",
    "asf",
    "avi",
    "caf",
    "flac",
    "flv",
    "matroska",
    "mov",
    "mp3",
    "mpeg",
    "mpegts",
    "ogg",
    "w64",
    "wav",
)


# ------------------------------------------------------------------------------------- errors


class AudioErrorReason(StrEnum):
    NO_AUDIO = "no_audio"
    EMPTY = "empty"
    UNDECODABLE = "undecodable"
    TOO_LONG = "too_long"
    UNSUPPORTED_FORMAT = "unsupported_format"


class AudioError(Exception):
    """The file cannot be transcribed as it is; ``reason`` says why (for the user's message)."""

    reason: ClassVar[AudioErrorReason]


class NoAudioStream(AudioError):
    reason = AudioErrorReason.NO_AUDIO


class EmptyAudio(AudioError):
    reason = AudioErrorReason.EMPTY


class UndecodableAudio(AudioError):
    reason = AudioErrorReason.UNDECODABLE


class UnsupportedFormat(AudioError):
    """A playlist, a list of files, or any container that is not a recording: never opened."""

    reason = AudioErrorReason.UNSUPPORTED_FORMAT


class AudioTooLong(AudioError):
    reason = AudioErrorReason.TOO_LONG

    def __init__(self, duration: float, limit: float, *, exact: bool = True) -> None:
        more = "" if exact else "more than "
        super().__init__(f"audio lasts {more}{duration:.1f} s, longer than the {limit:.0f} s allowed")
        self.duration = duration
        self.limit = limit
        self.exact = exact  # False: decoding stopped at `duration`, the recording goes on


class FFmpegError(RuntimeError):
    """ffmpeg itself failed (crashed, timed out, or was not found): our fault, not the file's."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message + (f": {stderr_tail}" if stderr_tail else ""))
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class FFmpegTimeout(FFmpegError):
    pass


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """Limits and knobs of the audio pipeline; the defaults suit OpenAI's speech API."""

    max_duration: float = 4 * 3600.0
    # OpenAI refuses uploads over 25 MB; whisper-1 works best on chunks of a few minutes.
    max_chunk_seconds: float = 600.0
    max_chunk_bytes: int = 25 * 1000 * 1000
    sample_rate: int = 16_000
    bitrate: int = 24_000  # bits/s of the Opus output: ~10.8 MB per hour, clear speech
    silence_noise_db: float = -35.0
    # A pause a piece may end in with no overlap: half of it stays at the piece's end, and with
    # less than about 0.3 s of quiet there a recognizer takes the last sentence as running on
    # past the end and leaves it out (whisper defers it to a window of its own, often dropped).
    silence_min_seconds: float = 0.6
    # The shortest gap between words a hard cut may be placed in (no silence near its target).
    gap_min_seconds: float = 0.1
    # How far from a target boundary a silence may lie and still be used (clamped to a quarter
    # of the chunk length, so chunks never get tiny).
    search_window: float = 30.0
    # Audio repeated at the start of a chunk after a hard cut, so a word cut in half is heard whole.
    hard_cut_overlap: float = 2.0
    # ffmpeg must run at least this many times faster than real time, or it is killed.
    min_speed: float = 2.0
    timeout_floor: float = 60.0
    probe_timeout: float = 30.0
    ffmpeg: str | None = None  # an explicit binary; default: ffmpeg on PATH, else imageio-ffmpeg's

    def __post_init__(self) -> None:
        if self.max_chunk_seconds <= 0 or self.max_duration <= 0:
            raise ValueError("max_chunk_seconds and max_duration must be positive")
        if self.hard_cut_overlap < 0 or self.search_window < 0:
            raise ValueError("hard_cut_overlap and search_window must not be negative")
        if not 0 < self.gap_min_seconds <= self.silence_min_seconds:
            raise ValueError("gap_min_seconds must be positive and at most silence_min_seconds")
        if self.min_speed <= 0:
            raise ValueError("min_speed must be positive")

    @property
    def chunk_seconds(self) -> float:
        """The longest re-encoded chunk that also stays under ``max_chunk_bytes`` (20% margin for VBR)."""
        by_size = self.max_chunk_bytes * 8 / self.bitrate * 0.8
        return min(self.max_chunk_seconds, by_size)

    def timeout_for(self, seconds: float) -> float:
        return self.timeout_floor + seconds / self.min_speed


# ------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class AudioStream:
    index: int
    codec: str
    sample_rate: int | None
    channels: str | None
    bitrate: int | None = None  # bits/s, when the header tells


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What the header says; ``duration`` is measured by decoding when the header has none."""

    duration: float
    audio_streams: tuple[AudioStream, ...]
    container: str
    size: int


@dataclass(frozen=True, slots=True)
class Silence:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """One chunk of the normalized audio, in seconds from its start.

    ``overlap`` is how many seconds at the start of this chunk the previous chunk also covers
    (non-zero only after a hard cut); ``hard_cut`` says the boundary before it found no silence.
    """

    index: int
    start: float
    end: float
    overlap: float = 0.0
    hard_cut: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class AudioChunk:
    plan: ChunkPlan
    path: Path

    @property
    def index(self) -> int:
        return self.plan.index

    @property
    def start(self) -> float:
        return self.plan.start

    @property
    def end(self) -> float:
        return self.plan.end


@dataclass(frozen=True, slots=True)
class ScannedAudio:
    """What decoding the first audio stream found: its real length (samples decoded, the length
    charged), its silences, and where its timestamps end (``span``: the timeline pieces are cut
    on, and silences placed on). ``gaps`` are all its pauses of ``gap_min_seconds`` or more,
    the silences among them."""

    duration: float
    silences: tuple[Silence, ...]
    span: float
    gaps: tuple[Silence, ...] = ()


@dataclass(frozen=True, slots=True)
class NormalizedAudio:
    path: Path
    duration: float
    silences: tuple[Silence, ...]
    gaps: tuple[Silence, ...] = ()  # as in ScannedAudio


@dataclass(frozen=True, slots=True)
class PieceFormat:
    """The container a piece is written in: ffmpeg's muxer, the suffix the API reads it by, and
    the codec (packets copied, unless the container can't be written right from copied ones)."""

    muxer: str
    suffix: str
    codec: str = "copy"


@dataclass(frozen=True, slots=True)
class PreparedAudio:
    """The pieces to send; ``duration`` is the decoded length they cover: the one charged.

    ``copied`` says the pieces are the original audio stream, cut without re-encoding (except a
    piece that was over the size limit); otherwise they are cut from a normalized Opus file.
    """

    info: AudioInfo
    duration: float
    silences: tuple[Silence, ...]
    chunks: tuple[AudioChunk, ...] = field(default=())
    copied: bool = False
