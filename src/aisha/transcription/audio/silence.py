"""Decoding a recording to find its real length and its silences: cheaply (:func:`scan`, nothing
encoded) or into mono compressed audio in the same pass (:func:`normalize`)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import subprocess
from pathlib import Path

from aisha.transcription.audio.ffmpeg import _TIME_RE, _input, _last_line, find_ffmpeg, run_ffmpeg
from aisha.transcription.audio.probe import _measure_duration, _output_duration
from aisha.transcription.audio.types import (
    MIN_AUDIO_SECONDS,
    AudioConfig,
    AudioTooLong,
    EmptyAudio,
    NormalizedAudio,
    PieceFormat,
    ScannedAudio,
    Silence,
    UndecodableAudio,
)

_OGG = PieceFormat("ogg", ".ogg")
_MP3 = PieceFormat("mp3", ".mp3")

_SILENCE_START_RE = re.compile(r"silence_start: (-?[0-9.eE+-]+)")
_SILENCE_END_RE = re.compile(r"silence_end: (-?[0-9.eE+-]+)")
_SAMPLES_RE = re.compile(r"\] n_samples: (\d+)")
# Silences are found as well at 8 kHz as at 16, on half the samples.
_SCAN_RATE = 8_000
_ONE_SAMPLE = 1 / _SCAN_RATE


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

    def until(self, duration: float, config: AudioConfig) -> tuple[tuple[Silence, ...], tuple[Silence, ...]]:
        """The silences (``silence_min_seconds`` or more) and all the gaps found, in order."""
        gaps = tuple(self._found)
        if self._open is not None:  # older ffmpeg leaves a silence running into the end unclosed
            gaps = (*gaps, Silence(self._open, duration))
        # One detector finds both: a silence is a gap that lasts (a sample's worth of rounding).
        silences = tuple(g for g in gaps if g.duration >= config.silence_min_seconds - _ONE_SAMPLE)
        return silences, gaps


def _detect(config: AudioConfig) -> str:
    """The silencedetect filter: every gap of ``gap_min_seconds`` or more."""
    return f"silencedetect=noise={config.silence_noise_db:g}dB:d={config.gap_min_seconds:g}"


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
            _detect(config),
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
    found, gaps = silences.until(span, config)
    return ScannedAudio(duration=duration, silences=found, span=span, gaps=gaps)


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
                _detect(config),
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
    found, gaps = silences.until(duration, config)
    return NormalizedAudio(path=dst, duration=duration, silences=found, gaps=gaps)
