"""Reading a file's header with ``ffmpeg -i`` (no ffprobe: the ``imageio-ffmpeg`` wheel ships only
ffmpeg), and measuring a length by decoding when the header has none."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from aisha.transcription.audio.ffmpeg import _TIME_RE, _input, _last_line, run_ffmpeg
from aisha.transcription.audio.types import (
    ALLOWED_DEMUXERS,
    MIN_AUDIO_SECONDS,
    AudioConfig,
    AudioInfo,
    AudioStream,
    AudioTooLong,
    EmptyAudio,
    NoAudioStream,
    UndecodableAudio,
    UnsupportedFormat,
)

_FORMAT_REFUSED = "Format not on whitelist"

_DURATION_RE = re.compile(r"^\s*Duration:\s*(?:(\d+):(\d+):(\d+(?:\.\d+)?)|N/A)")
_INPUT_RE = re.compile(r"^Input #0, (.+?), from ")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)\S*: (\w+): (.*)$")
_RATE_RE = re.compile(r"(\d+) Hz(?:, ([^,]+))?")
_KBPS_RE = re.compile(r"(\d+) kb/s")


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


async def _output_duration(path: Path, config: AudioConfig) -> float:
    lines: list[str] = []
    await run_ffmpeg(_input(path), timeout=config.probe_timeout, ffmpeg=config.ffmpeg, on_stderr=lines.append)
    _, duration, streams, _ = _parse_header(lines)
    if duration is None or not streams:
        return 0.0
    return duration
