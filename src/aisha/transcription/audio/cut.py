"""Cutting a recording into the pieces the speech API takes: copied from the original stream where
the API reads its codec, else from a normalized Opus file; a piece over the size limit re-encoded."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from aisha.transcription.audio.ffmpeg import _input, run_ffmpeg
from aisha.transcription.audio.plan import plan_chunks
from aisha.transcription.audio.probe import _output_duration, probe
from aisha.transcription.audio.silence import _MP3, _OGG, _pick_encoder, normalize, scan
from aisha.transcription.audio.types import (
    AudioChunk,
    AudioConfig,
    AudioInfo,
    AudioStream,
    AudioTooLong,
    ChunkPlan,
    FFmpegError,
    NormalizedAudio,
    PieceFormat,
    PreparedAudio,
    ScannedAudio,
    Silence,
)

log = logging.getLogger(__name__)

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


def _plan(audio: ScannedAudio | NormalizedAudio, max_chunk: float, config: AudioConfig) -> list[ChunkPlan]:
    return plan_chunks(
        audio.duration,
        audio.silences,
        max_chunk=max_chunk,
        window=config.search_window,
        overlap=config.hard_cut_overlap,
        gaps=audio.gaps,
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
            plans = _plan(scanned, max_chunk, config)
            chunks = await cut_chunks(src, plans, work_dir, piece=piece, config=config)
            chunks = await _within_size(chunks, config, reencode_from=src)
            return _prepared(info, scanned.duration, scanned.silences, chunks, copied=True)
        log.info("audio timestamps span %.1f s, %.1f s decoded: re-encoded", scanned.span, scanned.duration)
    normalized = await normalize(src, work_dir, config=config)
    plans = _plan(normalized, config.chunk_seconds, config)
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
