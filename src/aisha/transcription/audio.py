"""The audio side of transcription, on ffmpeg: probe, find silences, cut into pieces the API takes.

Every ffmpeg run is an async subprocess with a timeout, its stderr read line by line as it comes
(only a short tail is kept for error messages), and the process killed if the caller is cancelled.
Audio never enters Python's memory: each step reads a file on disk and writes one in a work dir,
so peak memory stays flat however long the recording is.

Every input is opened as ``file:<path>`` with ``-protocol_whitelist file`` and
``-format_whitelist``, so ffmpeg itself refuses to follow a playlist or a list of other files
(``hls``, ``concat``…), or to reach any other protocol, whatever a file says about itself.

The steps:

1. :func:`probe` reads the container header with ``ffmpeg -i`` (no ffprobe: the ``imageio-ffmpeg``
   wheel ships only ffmpeg). It refuses a file that is not a recording (a playlist, a concat list,
   an image sequence: see ``ALLOWED_DEMUXERS``), one with no audio stream, an empty or undecodable
   one, and one whose header says it is longer than the maximum, before anything is charged. The
   header's duration is only a claim: it prices the first hold, never the bill.
2. When the speech API reads the first audio stream's codec (see :func:`copy_format`),
   :func:`scan` decodes it cheaply (mono, 8 kHz, video never decoded) and runs ``silencedetect``
   on it; the length it decoded is the real length, the one charged. The pieces are then copied
   out of the original stream (:func:`cut_chunks`, no re-encoding): far less work than encoding,
   and the API hears the recording as it was. A piece that would still be over the API's size
   limit is re-encoded on its own.
3. Otherwise (a codec the API doesn't read, PCM, audio whose pieces would have to be short to
   fit the size limit, or timestamps that disagree with the samples decoded), :func:`normalize`
   decodes it once into mono 16 kHz Opus and finds the silences in the same pass; that file is cut.
4. :func:`plan_chunks` (pure) picks the cut points: near each target boundary, the middle of the
   longest silence in a window; where there is none, a hard cut, and the next chunk starts a little
   earlier so that no word is lost (the merge removes the words heard twice). Copied cuts land on
   the nearest packet boundary (an MP3 or AAC frame, an Opus packet: tens of milliseconds), well
   inside a pause or the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import os
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

__all__ = [
    "ALLOWED_DEMUXERS",
    "MIN_AUDIO_SECONDS",
    "AudioChunk",
    "AudioConfig",
    "AudioError",
    "AudioErrorReason",
    "AudioInfo",
    "AudioStream",
    "AudioTooLong",
    "ChunkPlan",
    "EmptyAudio",
    "FFmpegError",
    "FFmpegResult",
    "FFmpegTimeout",
    "NoAudioStream",
    "NormalizedAudio",
    "PieceFormat",
    "PreparedAudio",
    "ScannedAudio",
    "Silence",
    "UndecodableAudio",
    "UnsupportedFormat",
    "chunk_file_name",
    "copy_format",
    "cut_chunks",
    "find_ffmpeg",
    "normalize",
    "plan_chunks",
    "prepare_audio",
    "probe",
    "run_ffmpeg",
    "scan",
]

log = logging.getLogger(__name__)

# OpenAI answers "Audio file is too short" below 0.1 s; shorter than that counts as empty.
MIN_AUDIO_SECONDS = 0.1
_STDERR_TAIL_LINES = 40
_READ_SIZE = 64 * 1024

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
_FORMAT_REFUSED = "Format not on whitelist"


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
    silence_min_seconds: float = 0.4
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
    on, and silences placed on)."""

    duration: float
    silences: tuple[Silence, ...]
    span: float


@dataclass(frozen=True, slots=True)
class NormalizedAudio:
    path: Path
    duration: float
    silences: tuple[Silence, ...]


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


# ------------------------------------------------------------------------------ running ffmpeg


@functools.cache
def _default_ffmpeg() -> str:
    # Debian's ffmpeg when installed (system codecs, security updates), else the static binary
    # from the imageio-ffmpeg wheel, so a bare `pip install` always has one.
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]

        exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # the wheel raises RuntimeError when it has no binary for this platform
        raise FFmpegError("no ffmpeg: install Debian's ffmpeg or the imageio-ffmpeg wheel") from exc
    return exe


def find_ffmpeg(explicit: str | None = None) -> str:
    """The ffmpeg binary to run: ``explicit`` if given, else ffmpeg on PATH, else imageio-ffmpeg's."""
    return explicit or _default_ffmpeg()


@dataclass(frozen=True, slots=True)
class FFmpegResult:
    returncode: int
    stderr_tail: str


LineHandler = Callable[[str], None]


async def _pump(stream: asyncio.StreamReader, on_line: LineHandler) -> None:
    # Read in blocks and split on both \n and \r (ffmpeg's stats use \r): readline() would fail on
    # a line longer than the reader's limit, and nothing here may grow with the input.
    pending = b""
    while True:
        block = await stream.read(_READ_SIZE)
        if not block:
            break
        pending += block
        *lines, pending = re.split(rb"[\r\n]", pending)
        if len(pending) > _READ_SIZE:  # a runaway line: keep its start only
            pending = pending[:_READ_SIZE]
        for raw in lines:
            if raw:
                on_line(raw.decode("utf-8", "replace"))
    if pending:
        on_line(pending.decode("utf-8", "replace"))


async def run_ffmpeg(
    args: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109 - the timeout is part of the subprocess contract
    ffmpeg: str | None = None,
    on_stderr: LineHandler | None = None,
    on_stdout: LineHandler | None = None,
) -> FFmpegResult:
    """Run ffmpeg with ``args``, never blocking the loop; kill it on timeout or cancellation.

    Returns the exit code and the last lines of stderr; a non-zero exit is not raised here, since
    for a probe it is the normal outcome. Raises :class:`FFmpegTimeout` after ``timeout`` seconds.
    """
    exe = find_ffmpeg(ffmpeg)
    tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)

    def stderr_line(line: str) -> None:
        tail.append(line)
        if on_stderr is not None:
            on_stderr(line)

    try:
        proc = await asyncio.create_subprocess_exec(
            exe,
            "-hide_banner",
            "-nostdin",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if on_stdout else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise FFmpegError(f"cannot start {exe}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            assert proc.stderr is not None
            pumps = [_pump(proc.stderr, stderr_line)]
            if on_stdout is not None:
                assert proc.stdout is not None
                pumps.append(_pump(proc.stdout, on_stdout))
            await asyncio.gather(*pumps)
            returncode = await proc.wait()
    except TimeoutError:
        raise FFmpegTimeout(f"ffmpeg ran longer than {timeout:.0f} s", stderr_tail="\n".join(tail)) from None
    finally:
        if proc.returncode is None:
            # Cancelled or timed out: the child must not outlive the request that started it.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return FFmpegResult(returncode, "\n".join(tail))


# ---------------------------------------------------------------------------------------- probe


def _input(path: str | os.PathLike[str], *, audio_only: bool = False) -> list[str]:
    """Options that let ffmpeg open this one local file as a recording, and nothing else.

    ``audio_only``: the demuxer drops every other stream at once (a video is never decoded, and
    an MP4's video samples are not even read).
    """
    return [
        *(["-vn", "-sn", "-dn"] if audio_only else []),
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(ALLOWED_DEMUXERS),
        "-i",
        f"file:{os.fspath(path)}",
    ]


_DURATION_RE = re.compile(r"^\s*Duration:\s*(?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)")
_INPUT_RE = re.compile(r"^Input #0, (.+?), from ")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)\S*: (\w+): (.*)$")
_RATE_RE = re.compile(r"(\d+) Hz(?:, ([^,]+))?")
_KBPS_RE = re.compile(r"(\d+) kb/s")
_TIME_RE = re.compile(r"^out_time_us=(\d+)")


def _parse_header(lines: Sequence[str]) -> tuple[str | None, float | None, list[AudioStream], int]:
    container: str | None = None
    duration: float | None = None
    bitrate: int | None = None  # of the whole file
    audio: list[AudioStream] = []
    other_streams = 0
    for line in lines:
        if container is None and (m := _INPUT_RE.match(line)):
            container = m.group(1)
            continue
        if container is None:
            continue
        if line.startswith(("Input #1", "Output #")):
            break
        if duration is None and (m := _DURATION_RE.match(line)):
            if m.group(1) is not None:
                duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
            if kbps := _KBPS_RE.search(line):
                bitrate = int(kbps.group(1)) * 1000
            continue
        if m := _STREAM_RE.match(line):
            if m.group(2) != "Audio":
                other_streams += 1
                continue
            codec = m.group(3).split(maxsplit=1)[0].rstrip(",") if m.group(3).strip() else "unknown"
            rate = _RATE_RE.search(m.group(3))
            kbps = _KBPS_RE.search(m.group(3))
            audio.append(
                AudioStream(
                    index=int(m.group(1)),
                    codec=codec,
                    sample_rate=int(rate.group(1)) if rate else None,
                    channels=rate.group(2).strip() if rate and rate.group(2) else None,
                    bitrate=int(kbps.group(1)) * 1000 if kbps else None,
                )
            )
    if len(audio) == 1 and not other_streams and audio[0].bitrate is None and bitrate:
        # Some containers (Ogg, FLAC, Matroska) state no bitrate per stream; the file's is its own.
        audio[0] = dataclasses.replace(audio[0], bitrate=bitrate)
    return container, duration, audio, other_streams


async def _measure_duration(path: Path, config: AudioConfig, *, cap: float | None = None) -> float:
    """Decode the first audio stream to nowhere and report how long it was (at most ``cap``,
    by default just past the limit)."""
    last_us = 0

    def stdout_line(line: str) -> None:
        nonlocal last_us
        if m := _TIME_RE.match(line):
            last_us = max(last_us, int(m.group(1)))

    cap = cap or config.max_duration + 1.0
    result = await run_ffmpeg(
        [
            "-nostats",
            "-progress",
            "pipe:1",
            *_input(path),
            "-map",
            "0:a:0",
            "-t",
            f"{cap:.3f}",
            "-f",
            "null",
            "-",
        ],
        timeout=config.timeout_for(cap),
        ffmpeg=config.ffmpeg,
        on_stdout=stdout_line,
    )
    if result.returncode != 0:
        raise UndecodableAudio(f"the audio cannot be decoded: {_last_line(result.stderr_tail)}")
    return last_us / 1_000_000


async def probe(path: str | os.PathLike[str], *, config: AudioConfig | None = None) -> AudioInfo:
    """Check that ``path`` holds audio we can transcribe, and how long it lasts.

    Raises an :class:`AudioError` (unsupported_format, no_audio, empty, undecodable, too_long) for
    a file that cannot be transcribed, and :class:`FFmpegError` when ffmpeg itself fails. The
    duration is what the header claims (measured only when it has none): see :func:`normalize`.
    """
    config = config or AudioConfig()
    path = Path(path)
    size = await asyncio.to_thread(_file_size, path)
    if size == 0:
        raise EmptyAudio("the file is empty")
    lines: list[str] = []
    # With no output file ffmpeg prints the input's header and exits 1 ("At least one output file
    # must be specified"); a file it cannot open has no "Input #0" line at all.
    result = await run_ffmpeg(
        _input(path), timeout=config.probe_timeout, ffmpeg=config.ffmpeg, on_stderr=lines.append
    )
    container, duration, streams, other_streams = _parse_header(lines)
    if any(_FORMAT_REFUSED in line for line in lines) or (
        container is not None and not set(container.split(",")) & set(ALLOWED_DEMUXERS)
    ):
        raise UnsupportedFormat(f"not a recording: {container or _last_line(result.stderr_tail)}")
    if container is None or not (streams or other_streams):
        # Garbage sometimes passes for a container at a low score, but then holds no stream.
        raise UndecodableAudio(f"not a media file ffmpeg can read: {_last_line(result.stderr_tail)}")
    if not streams:
        raise NoAudioStream("the file has no audio stream")
    if duration is not None and duration > config.max_duration:
        raise AudioTooLong(duration, config.max_duration)
    if duration is None or duration < MIN_AUDIO_SECONDS:
        # No duration in the header (a raw stream, a live recording): measure by decoding.
        duration = await _measure_duration(path, config)
        if duration > config.max_duration:
            raise AudioTooLong(duration, config.max_duration)
    if duration < MIN_AUDIO_SECONDS:
        raise EmptyAudio(f"the audio lasts {duration:.3f} s")
    return AudioInfo(duration=duration, audio_streams=tuple(streams), container=container, size=size)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise UndecodableAudio(f"no such file: {path.name}") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no details"


# ------------------------------------------------------------------------------- find silences

_SILENCE_START_RE = re.compile(r"silence_start: (-?[0-9.eE+-]+)")
_SILENCE_END_RE = re.compile(r"silence_end: (-?[0-9.eE+-]+)")
_SAMPLES_RE = re.compile(r"\] n_samples: (\d+)")
# Silences are found as well at 8 kHz as at 16, on half the samples.
_SCAN_RATE = 8_000


class _SilenceLog:
    """The silences ``silencedetect`` reports on ffmpeg's stderr, collected line by line."""

    def __init__(self) -> None:
        self._found: list[Silence] = []
        self._open: float | None = None

    def feed(self, line: str) -> None:
        if m := _SILENCE_START_RE.search(line):
            self._open = max(0.0, float(m.group(1)))
        elif (m := _SILENCE_END_RE.search(line)) and self._open is not None:
            self._found.append(Silence(self._open, float(m.group(1))))
            self._open = None

    def until(self, duration: float) -> tuple[Silence, ...]:
        if self._open is not None:  # older ffmpeg leaves a silence running into the end unclosed
            return (*self._found, Silence(self._open, duration))
        return tuple(self._found)


async def _too_long(src: str | os.PathLike[str], config: AudioConfig) -> AudioTooLong:
    """Decoding stopped just past the limit; a plain decode (nothing encoded or filtered) finds
    how long the recording really is, up to twice the limit, for the user's message."""
    cap = 2 * config.max_duration
    real = await _measure_duration(Path(src), config, cap=cap)
    return AudioTooLong(min(real, cap), config.max_duration, exact=real < cap - 1.0)


async def scan(src: str | os.PathLike[str], *, config: AudioConfig | None = None) -> ScannedAudio:
    """Decode the first audio stream of ``src`` as cheaply as finding silences allows (mono,
    8 kHz, nothing encoded, video never decoded): its real length and its silences.

    Silence times are the stream's own timestamps (as ffmpeg counts them from the file's start),
    the times a stream copy cuts at; the length is the count of samples decoded.
    """
    config = config or AudioConfig()
    silences = _SilenceLog()
    samples = 0
    span_us = 0

    def stderr_line(line: str) -> None:
        nonlocal samples
        if m := _SAMPLES_RE.search(line):
            # One count per filter graph: ffmpeg builds a new one when the audio's format changes.
            samples += int(m.group(1))
        else:
            silences.feed(line)

    def stdout_line(line: str) -> None:
        nonlocal span_us
        if m := _TIME_RE.match(line):
            span_us = max(span_us, int(m.group(1)))

    rate = _SCAN_RATE
    cap = config.max_duration + 1.0  # a header that lied about its length cannot make us decode forever
    chain = ",".join(
        [
            f"aresample={rate}",
            f"aformat=sample_fmts=s16:sample_rates={rate}:channel_layouts=mono",
            f"silencedetect=noise={config.silence_noise_db:g}dB:d={config.silence_min_seconds:g}",
            "volumedetect",  # for its count of samples, printed at the end
        ]
    )
    args = ["-nostats", "-progress", "pipe:1", *_input(src, audio_only=True), "-map", "0:a:0"]
    args += ["-t", f"{cap:.3f}", "-af", chain, "-f", "null", "-"]
    result = await run_ffmpeg(
        args,
        # The header's length is only a claim: the timeout allows for the most we will decode.
        timeout=config.timeout_for(cap),
        ffmpeg=config.ffmpeg,
        on_stderr=stderr_line,
        on_stdout=stdout_line,
    )
    if result.returncode != 0:
        raise UndecodableAudio(f"the audio cannot be decoded: {_last_line(result.stderr_tail)}")
    duration = samples / rate
    if duration > config.max_duration:
        raise await _too_long(src, config)
    if duration < MIN_AUDIO_SECONDS:
        raise EmptyAudio(f"the audio lasts {duration:.3f} s")
    span = span_us / 1_000_000
    return ScannedAudio(duration=duration, silences=silences.until(span), span=span)


# ------------------------------------------------------------------------------------ normalize


@functools.cache
def _encoder(ffmpeg: str) -> tuple[PieceFormat, list[str]]:
    # libopus in both Debian's build and imageio-ffmpeg's; mp3 in case a build lacks it. Runs
    # once per binary, in a thread (see _pick_encoder).
    out = subprocess.run(  # noqa: S603 - fixed arguments, the binary chosen by configuration
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if re.search(r"^\s*A\S*\s+libopus\b", out, re.MULTILINE):
        # Complexity 5 of 10 encodes a third faster than the default for the same size on speech.
        return _OGG, ["-c:a", "libopus", "-application", "voip", "-compression_level", "5"]
    return _MP3, ["-c:a", "libmp3lame"]


async def _pick_encoder(config: AudioConfig) -> tuple[PieceFormat, list[str]]:
    return await asyncio.to_thread(_encoder, find_ffmpeg(config.ffmpeg))


async def normalize(
    src: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    config: AudioConfig | None = None,
) -> NormalizedAudio:
    """Decode ``src`` once into mono compressed audio in ``work_dir`` and find its silences."""
    config = config or AudioConfig()
    piece, codec_args = await _pick_encoder(config)
    dst = Path(work_dir) / f"normalized{piece.suffix}"
    silences = _SilenceLog()
    cap = config.max_duration + 1.0  # a header that lied about its length cannot make us decode forever
    args = [
        "-nostats",
        "-y",
        *_input(src, audio_only=True),
        "-map",
        "0:a:0",
        "-map_metadata",
        "-1",
        "-t",
        f"{cap:.3f}",
        "-af",
        ",".join(
            [
                f"aresample={config.sample_rate}",
                f"aformat=sample_fmts=flt:sample_rates={config.sample_rate}:channel_layouts=mono",
                # Count time in samples from zero, so silence times are times in the output file.
                "asetpts=N/SR/TB",
                f"silencedetect=noise={config.silence_noise_db:g}dB:d={config.silence_min_seconds:g}",
            ]
        ),
        *codec_args,
        "-b:a",
        str(config.bitrate),
        str(dst),
    ]
    result = await run_ffmpeg(
        args,
        # The header's length is only a claim: a file that says 2 s may hold hours. The timeout
        # allows for the most we will ever decode, so a lying header is charged, not timed out.
        timeout=config.timeout_for(cap),
        ffmpeg=config.ffmpeg,
        on_stderr=silences.feed,
    )
    if result.returncode != 0:
        raise UndecodableAudio(f"the audio cannot be decoded: {_last_line(result.stderr_tail)}")
    duration = await _output_duration(dst, config)
    if duration > config.max_duration:
        raise await _too_long(src, config)
    if duration < MIN_AUDIO_SECONDS:
        raise EmptyAudio(f"the audio lasts {duration:.3f} s")
    return NormalizedAudio(path=dst, duration=duration, silences=silences.until(duration))


async def _output_duration(path: Path, config: AudioConfig) -> float:
    lines: list[str] = []
    await run_ffmpeg(_input(path), timeout=config.probe_timeout, ffmpeg=config.ffmpeg, on_stderr=lines.append)
    _, duration, streams, _ = _parse_header(lines)
    if duration is None or not streams:
        return 0.0
    return duration


# ----------------------------------------------------------------------------------------- plan


def plan_chunks(
    duration: float,
    silences: Sequence[Silence],
    *,
    max_chunk: float,
    window: float = 30.0,
    overlap: float = 2.0,
) -> list[ChunkPlan]:
    """Cut ``[0, duration]`` into chunks of at most ``max_chunk`` seconds.

    Boundaries aim at equal chunks (a 25-minute file with 10-minute chunks gives three of ~8.3,
    not 10 + 10 + 5), which balances the parallel requests. Each boundary goes to the middle of
    the longest silence (compared to 0.1 s, capped at 2 s) within ``window`` of its target (ties:
    the closest), never making a chunk longer than ``max_chunk``; with no silence there it is a
    hard cut at the target, and the next chunk starts ``overlap`` seconds earlier.
    """
    if duration <= 0:
        return []
    if duration <= max_chunk:
        return [ChunkPlan(0, 0.0, duration)]
    # Clamped so every chunk is at least a quarter of max_chunk and each step moves forward.
    window = min(window, max_chunk / 4)
    overlap = min(overlap, max_chunk / 4)
    ordered = sorted(silences, key=lambda s: s.start)
    plans: list[ChunkPlan] = []
    start, chunk_overlap, hard = 0.0, 0.0, False
    while duration - start > max_chunk:
        remaining = duration - start
        target = start + remaining / math.ceil(remaining / max_chunk)
        lo, hi = target - window, min(target + window, start + max_chunk)
        best: tuple[float, float, float] | None = None  # (-length, distance, cut)
        for silence in ordered:
            if silence.start >= hi:
                break
            a, b = max(silence.start, lo), min(silence.end, hi)
            if b <= a:
                continue
            # The middle of the silence, or the point of it nearest the middle inside the window.
            cut = min(max((silence.start + silence.end) / 2, a), b)
            # Longer pauses are likelier ends of sentences, but past 2 s (or within 0.1 s of each
            # other) they are as good, and the one nearer the target keeps chunks even.
            key = (-round(min(silence.duration, 2.0), 1), abs(cut - target), cut)
            if best is None or key < best:
                best = key
        if best is not None:
            cut = best[2]
            plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
            start, chunk_overlap, hard = cut, 0.0, False
        else:
            cut = target
            plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
            start, chunk_overlap, hard = cut - overlap, overlap, True
    plans.append(ChunkPlan(len(plans), start, duration, chunk_overlap, hard))
    return plans


# ------------------------------------------------------------------------------------------ cut

_OGG = PieceFormat("ogg", ".ogg")
_MP3 = PieceFormat("mp3", ".mp3")
# The codecs the speech API reads, each in a container it reads them in (it knows a file by its
# name: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm). Anything else is re-encoded, WAV's
# PCM too: uncompressed, it would upload 10 to 60 times the bytes of the Opus it becomes, and a
# 10-minute piece of CD-quality PCM is over the size limit.
_COPYABLE: dict[str, PieceFormat] = {
    "mp3": _MP3,
    "aac": PieceFormat("ipod", ".m4a"),  # from an MP4, a video, ADTS or MPEG-TS alike
    "opus": _OGG,  # Telegram's voice notes; WebM/Matroska Opus too
    "vorbis": _OGG,
    # A FLAC header states the length, and stream copy would keep the whole file's: each piece is
    # encoded again, losslessly (a few hundred times faster than real time).
    "flac": PieceFormat("flac", ".flac", codec="flac"),
}
# Copied pieces keep this share of the size limit free (a VBR stream's rate varies).
_SIZE_MARGIN = 0.8
# Below this share of the usual chunk length, pieces small enough for the size limit would mean
# many requests and a large upload (lossless audio, a very high bitrate): those are re-encoded.
_MIN_COPY_SHARE = 0.5
# Pieces are cut, and silences found, at the stream's own timestamps; the length charged is the
# samples decoded. Where the two disagree (timestamps with gaps or jumps), the plan would not fit
# the pieces: such a file goes the re-encoding way, whose timeline is its samples.
_TIMELINE_TOLERANCE = 0.5
# Chunks cut at once, and how far before a chunk its ffmpeg enters the file (an Ogg page, an MP3
# seek table's step); the packets in between are read and dropped.
_CUT_CONCURRENCY = 2
_SEEK_MARGIN = 10.0


def chunk_file_name(index: int, suffix: str) -> str:
    """The file name of chunk ``index`` (what the provider sees as the upload's name)."""
    return f"chunk-{index:04d}{suffix}"


def copy_format(stream: AudioStream, config: AudioConfig) -> tuple[PieceFormat, float] | None:
    """How to cut ``stream`` without re-encoding it: the pieces' format and longest length.

    None when it must be re-encoded: a codec the speech API doesn't read, or a bitrate so high
    that pieces under the size limit would be less than half the usual length.
    """
    piece = _COPYABLE.get(stream.codec)
    if piece is None:
        return None
    seconds = config.max_chunk_seconds
    if stream.bitrate:
        seconds = min(seconds, config.max_chunk_bytes * 8 / stream.bitrate * _SIZE_MARGIN)
    if seconds < config.max_chunk_seconds * _MIN_COPY_SHARE:
        return None
    return piece, seconds


async def cut_chunks(
    src: str | os.PathLike[str],
    plans: Sequence[ChunkPlan],
    work_dir: str | os.PathLike[str],
    *,
    piece: PieceFormat,
    config: AudioConfig | None = None,
) -> list[AudioChunk]:
    """Copy each planned chunk of the first audio stream of ``src`` into a file of its own.

    Packets are copied (nothing re-encoded but FLAC, see ``_COPYABLE``), each chunk starting and
    ending on a packet boundary. One ffmpeg per chunk, two at a time: each seeks near its start
    and reads only its own part (one ffmpeg writing every chunk would hand each packet to all).
    """
    config = config or AudioConfig()
    slots = asyncio.Semaphore(_CUT_CONCURRENCY)

    async def cut_one(plan: ChunkPlan) -> AudioChunk:
        dst = Path(work_dir) / chunk_file_name(plan.index, piece.suffix)
        last = plan is plans[-1]
        async with slots:
            await _cut(src, plan, dst, piece, config, last=last, seek=True)
            if await _output_duration(dst, config) < plan.duration - _TIMELINE_TOLERANCE:
                # The seek landed past the start (a bitrate guess), or timestamps start over
                # (chained Ogg): read from the top, as the silences were found.
                log.info("audio chunk %d: the seek missed its start, cut again from the top", plan.index)
                await _cut(src, plan, dst, piece, config, last=last, seek=False)
        return AudioChunk(plan, dst)

    return list(await asyncio.gather(*(cut_one(plan) for plan in plans)))


async def _cut(
    src: str | os.PathLike[str],
    plan: ChunkPlan,
    dst: Path,
    piece: PieceFormat,
    config: AudioConfig,
    *,
    last: bool,
    seek: bool,
) -> None:
    """Write chunk ``plan`` of ``src`` to ``dst``.

    With ``seek``, the input is entered a little before the chunk (demuxers land on a page or a
    guess, not a packet); the exact start and end are then picked by timestamp, counted from the
    file's start as everywhere else (``-copyts -start_at_zero``), and the chunk's own timestamps
    start at zero. Without, the file is read from the top, its timestamps made continuous by
    ffmpeg (chained Ogg streams each start again at zero).
    """
    args = ["-nostats", "-y"]
    if seek and plan.start > 0:
        args += ["-copyts", "-start_at_zero", "-ss", f"{max(0.0, plan.start - _SEEK_MARGIN):.3f}"]
    args += _input(src, audio_only=True)
    args += ["-map", "0:a:0", "-c:a", piece.codec, "-map_metadata", "-1", "-map_chapters", "-1"]
    if plan.start > 0:  # the first piece keeps the packets before zero (Opus's pre-skip)
        args += ["-ss", f"{plan.start:.3f}"]
    if not last:  # the last one runs to the end of what was decoded
        args += ["-to", f"{plan.end:.3f}"]
    args += ["-avoid_negative_ts", "make_zero", "-f", piece.muxer, str(dst)]
    result = await run_ffmpeg(args, timeout=config.timeout_for(plan.end), ffmpeg=config.ffmpeg)
    if result.returncode != 0:
        raise FFmpegError(
            f"cutting chunk {plan.index} failed", returncode=result.returncode, stderr_tail=result.stderr_tail
        )


async def _encode_chunk(
    src: str | os.PathLike[str], plan: ChunkPlan, work_dir: Path, config: AudioConfig
) -> AudioChunk:
    """Chunk ``plan`` of ``src`` re-encoded to mono Opus, for a copied piece over the size limit."""
    piece, codec_args = await _pick_encoder(config)
    dst = work_dir / chunk_file_name(plan.index, piece.suffix)
    rate = config.sample_rate
    result = await run_ffmpeg(
        [
            "-nostats",
            "-y",
            "-ss",
            f"{plan.start:.3f}",
            *_input(src, audio_only=True),
            "-t",
            f"{plan.duration:.3f}",
            "-map",
            "0:a:0",
            "-map_metadata",
            "-1",
            "-af",
            f"aresample={rate},aformat=sample_fmts=flt:sample_rates={rate}:channel_layouts=mono",
            *codec_args,
            "-b:a",
            str(config.bitrate),
            str(dst),
        ],
        timeout=config.timeout_for(plan.duration),
        ffmpeg=config.ffmpeg,
    )
    if result.returncode != 0:
        raise FFmpegError(
            f"encoding chunk {plan.index} failed",
            returncode=result.returncode,
            stderr_tail=result.stderr_tail,
        )
    return AudioChunk(plan, dst)


async def _within_size(
    chunks: Sequence[AudioChunk], config: AudioConfig, *, reencode_from: str | os.PathLike[str] | None = None
) -> list[AudioChunk]:
    """The chunks, each one over the size limit re-encoded from ``reencode_from`` (or refused)."""
    sizes = await asyncio.to_thread(lambda: [chunk.path.stat().st_size for chunk in chunks])
    fitted: list[AudioChunk] = []
    for chunk, size in zip(chunks, sizes, strict=True):
        if size > config.max_chunk_bytes and reencode_from is not None:
            log.info("audio chunk %d is %d bytes: re-encoded", chunk.index, size)
            encoded = await _encode_chunk(reencode_from, chunk.plan, chunk.path.parent, config)
            if encoded.path != chunk.path:
                await asyncio.to_thread(chunk.path.unlink)
            size = (await asyncio.to_thread(encoded.path.stat)).st_size
            chunk = encoded
        if size > config.max_chunk_bytes:
            raise FFmpegError(
                f"chunk {chunk.index} is {size} bytes, over the {config.max_chunk_bytes} allowed"
            )
        fitted.append(chunk)
    return fitted


def _plan(
    duration: float, silences: Sequence[Silence], max_chunk: float, config: AudioConfig
) -> list[ChunkPlan]:
    return plan_chunks(
        duration, silences, max_chunk=max_chunk, window=config.search_window, overlap=config.hard_cut_overlap
    )


async def prepare_audio(
    src: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    config: AudioConfig | None = None,
    info: AudioInfo | None = None,
) -> PreparedAudio:
    """Probe (unless ``info`` is given), find the silences and cut ``src`` into chunks under
    ``work_dir``: copied from the original stream where the speech API reads it, else re-encoded."""
    config = config or AudioConfig()
    if info is None:
        info = await probe(src, config=config)
    elif info.duration > config.max_duration:
        raise AudioTooLong(info.duration, config.max_duration)
    copying = copy_format(info.audio_streams[0], config) if info.audio_streams else None
    if copying is not None:
        piece, max_chunk = copying
        scanned = await scan(src, config=config)
        if abs(scanned.span - scanned.duration) <= _TIMELINE_TOLERANCE:
            plans = _plan(scanned.duration, scanned.silences, max_chunk, config)
            chunks = await cut_chunks(src, plans, work_dir, piece=piece, config=config)
            chunks = await _within_size(chunks, config, reencode_from=src)
            return _prepared(info, scanned.duration, scanned.silences, chunks, copied=True)
        log.info("audio timestamps span %.1f s, %.1f s decoded: re-encoded", scanned.span, scanned.duration)
    normalized = await normalize(src, work_dir, config=config)
    plans = _plan(normalized.duration, normalized.silences, config.chunk_seconds, config)
    if len(plans) == 1:
        chunks = [AudioChunk(plans[0], normalized.path)]
    else:
        piece, _ = await _pick_encoder(config)
        chunks = await cut_chunks(normalized.path, plans, work_dir, piece=piece, config=config)
    chunks = await _within_size(chunks, config)
    return _prepared(info, normalized.duration, normalized.silences, chunks, copied=False)


def _prepared(
    info: AudioInfo, duration: float, silences: tuple[Silence, ...], chunks: list[AudioChunk], *, copied: bool
) -> PreparedAudio:
    log.debug(
        "audio prepared: %.1f s, %d silences, %d chunks, %s",
        duration,
        len(silences),
        len(chunks),
        "copied" if copied else "re-encoded",
    )
    return PreparedAudio(info=info, duration=duration, silences=silences, chunks=tuple(chunks), copied=copied)
