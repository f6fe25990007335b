"""The audio pipeline on real ffmpeg: probing, refusals, silence detection and where files are cut.

Inputs are made by ffmpeg itself (tones, noise and digital silence at known times) and, when
espeak-ng is installed, real synthetic speech with pauses between sentences. Chunk lengths are
kept at 20 s so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import re
import shutil
import struct
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aisha.transcription.audio import (
    AudioConfig,
    AudioError,
    AudioErrorReason,
    AudioTooLong,
    ChunkPlan,
    EmptyAudio,
    FFmpegTimeout,
    NoAudioStream,
    PreparedAudio,
    Silence,
    UndecodableAudio,
    UnsupportedFormat,
    find_ffmpeg,
    normalize,
    plan_chunks,
    prepare_audio,
    probe,
    run_ffmpeg,
    scan,
)
from tests.media import ffconcat_list, hls_playlist, lying_ogg

FFMPEG = find_ffmpeg()
CONFIG = AudioConfig(max_chunk_seconds=20.0)
TONES = [4.0, 5.5, 3.0, 6.0, 4.5, 5.0, 3.5, 6.5, 4.0]  # seconds of tone, 1 s of silence between
GAP = 1.0
SENTENCES = [
    "The weather was calm when the boat left the harbour this morning.",
    "Nobody on board expected the storm that followed in the afternoon.",
    "By evening the waves had grown taller than the mast.",
    "The captain ordered everyone to stay below deck and wait.",
    "Hours later the wind finally dropped and the sky cleared.",
    "They reached the island at dawn, tired but safe.",
    "The villagers brought them bread, fish and dry blankets.",
    "Years afterwards the sailors still told the story every winter.",
]


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def tones_with_gaps(path: Path, tones: Sequence[float], gap: float) -> list[Silence]:
    """Tones separated by digital silence, all under faint noise like a real room; returns the gaps."""
    graph, labels, gaps, t = [], [], [], 0.0
    for i, seconds in enumerate(tones):
        graph.append(f"sine=f={300 + 40 * i}:r=16000:d={seconds}[t{i}]")
        labels.append(f"[t{i}]")
        t += seconds
        if i < len(tones) - 1:
            graph.append(f"anullsrc=r=16000:cl=mono,atrim=duration={gap}[g{i}]")
            labels.append(f"[g{i}]")
            gaps.append(Silence(t, t + gap))
            t += gap
    graph.append(f"{''.join(labels)}concat=n={len(labels)}:v=0:a=1[speech]")
    graph.append(f"anoisesrc=r=16000:a=0.002:d={t}[noise]")
    graph.append("[speech][noise]amix=inputs=2:normalize=0:duration=first[out]")
    ffmpeg("-filter_complex", ";".join(graph), "-map", "[out]", "-ac", "2", "-ar", "44100", str(path))
    return gaps


def boundaries(plans: Sequence[ChunkPlan]) -> list[float]:
    return [plan.end for plan in plans[:-1]]


def inside(t: float, silences: Sequence[Silence], margin: float = 0.0) -> bool:
    return any(s.start + margin <= t <= s.end - margin for s in silences)


def streams(path: Path) -> list[str]:
    """Each stream of ``path`` as ``ffmpeg -i`` names it, e.g. ``Audio: aac`` (ffprobe's job; the
    imageio-ffmpeg wheel has no ffprobe)."""
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    return [f"{m.group(1)}: {m.group(2)}" for m in re.finditer(r"Stream #0:\d+\S*: (\w+): (\w+)", header)]


def opus_head(path: Path) -> tuple[int, int]:
    """(channels, input sample rate) from the OpusHead packet of an OGG file."""
    data = path.read_bytes()[:200]
    head = data.index(b"OpusHead")
    return data[head + 9], struct.unpack_from("<I", data, head + 12)[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def gapped(media: Path) -> tuple[Path, list[Silence]]:
    path = media / "gapped.wav"
    return path, tones_with_gaps(path, TONES, GAP)


@pytest.fixture(scope="module")
def continuous(media: Path) -> Path:
    path = media / "continuous.mp3"
    ffmpeg(
        "-f", "lavfi", "-i", "sine=f=330:r=44100:d=50",
        "-f", "lavfi", "-i", "anoisesrc=r=44100:a=0.002:d=50",
        "-filter_complex", "[0][1]amix=inputs=2:normalize=0", "-ac", "2", str(path),
    )  # fmt: skip
    return path


@pytest.fixture(params=["default", "imageio"])
def binary(request: pytest.FixtureRequest) -> str:
    """Every audio step must work with Debian's ffmpeg and with the wheel's (which has no ffprobe)."""
    if request.param == "imageio":
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    return FFMPEG


# ---------------------------------------------------------------------------------------- probe


async def test_probe_reads_duration_and_audio_streams(continuous: Path, binary: str) -> None:
    info = await probe(continuous, config=AudioConfig(ffmpeg=binary))

    assert info.duration == pytest.approx(50.0, abs=0.1)
    assert len(info.audio_streams) == 1
    assert info.audio_streams[0].codec == "mp3"
    assert info.audio_streams[0].sample_rate == 44100
    assert info.audio_streams[0].channels == "stereo"
    assert info.container == "mp3"


async def test_probe_measures_a_file_whose_header_has_no_duration(media: Path, binary: str) -> None:
    path = media / "streamed.mka"
    # Matroska written to a pipe cannot go back to write its duration.
    with path.open("wb") as out:
        subprocess.run(
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=d=3",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=out,
            check=True,
        )

    info = await probe(path, config=AudioConfig(ffmpeg=binary))

    assert info.duration == pytest.approx(3.0, abs=0.1)


async def test_video_without_audio_is_refused(media: Path, binary: str) -> None:
    path = media / "video-only.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=d=2:s=64x64:r=10", "-c:v", "mpeg4", str(path))

    with pytest.raises(NoAudioStream) as caught:
        await probe(path, config=AudioConfig(ffmpeg=binary))
    assert caught.value.reason is AudioErrorReason.NO_AUDIO


async def test_video_with_sound_gives_its_audio(media: Path, tmp_path: Path, binary: str) -> None:
    path = media / "video-note.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=d=3:s=64x64:r=10", "-f", "lavfi", "-i", "sine=d=3",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip
    config = AudioConfig(ffmpeg=binary)

    info = await probe(path, config=config)
    prepared = await prepare_audio(path, tmp_path, config=config, info=info)

    assert [s.codec for s in info.audio_streams] == ["aac"]
    assert prepared.duration == pytest.approx(3.0, abs=0.1)
    # The sound track copied out as it was, without the picture.
    piece = prepared.chunks[0].path
    assert piece.suffix == ".m4a"
    assert streams(piece) == ["Audio: aac"]


async def test_empty_file_is_refused(media: Path) -> None:
    path = media / "empty.ogg"
    path.write_bytes(b"")

    with pytest.raises(EmptyAudio) as caught:
        await probe(path)
    assert caught.value.reason == "empty"


async def test_audio_of_zero_length_is_refused(media: Path, binary: str) -> None:
    path = media / "zero.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(path))

    with pytest.raises(EmptyAudio):
        await probe(path, config=AudioConfig(ffmpeg=binary))


@pytest.mark.parametrize("kind", ["noise", "truncated"])
async def test_corrupt_file_is_refused(media: Path, binary: str, kind: str) -> None:
    path = media / f"corrupt-{kind}.m4a"
    if kind == "noise":
        path.write_bytes(random.Random(7).randbytes(4096))
    else:
        # An upload cut short: an MP4 keeps its index (moov) at the end, so the start is useless.
        whole = media / "whole.m4a"
        ffmpeg("-f", "lavfi", "-i", "sine=d=5", "-c:a", "aac", str(whole))
        path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    with pytest.raises(UndecodableAudio) as caught:
        await probe(path, config=AudioConfig(ffmpeg=binary))
    assert caught.value.reason == "undecodable"


@pytest.mark.parametrize("kind", ["noise", "truncated"])
async def test_corrupt_file_is_refused_before_any_piece_is_made(
    media: Path, continuous: Path, tmp_path: Path, kind: str
) -> None:
    path = media / f"corrupt-{kind}.mp3"
    if kind == "noise":
        path.write_bytes(random.Random(8).randbytes(4096))
    else:
        path.write_bytes(continuous.read_bytes()[:300])  # a header and not one whole frame
    known = await probe(continuous, config=CONFIG)  # as if a caller had probed another file

    for info in (None, known):
        with pytest.raises((UndecodableAudio, EmptyAudio)) as caught:
            await prepare_audio(path, tmp_path, config=CONFIG, info=info)
        assert caught.value.reason in ("undecodable", "empty")
    assert list(tmp_path.iterdir()) == []


async def test_missing_file_is_refused(media: Path) -> None:
    with pytest.raises(UndecodableAudio):
        await probe(media / "nowhere.ogg")


async def test_too_long_file_is_refused_before_any_work(continuous: Path, tmp_path: Path) -> None:
    config = AudioConfig(max_duration=30.0, max_chunk_seconds=20.0)

    with pytest.raises(AudioTooLong) as caught:
        await prepare_audio(continuous, tmp_path, config=config)

    assert caught.value.reason == "too_long"
    assert caught.value.duration == pytest.approx(50.0, abs=0.1)
    assert caught.value.limit == 30.0
    assert list(tmp_path.iterdir()) == []  # refused from the header: nothing was decoded


async def test_too_long_file_without_duration_in_header_is_refused(media: Path, tmp_path: Path) -> None:
    path = media / "long-streamed.mka"
    with path.open("wb") as out:
        subprocess.run(
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "sine=d=40",
                "-f",
                "matroska",
                "pipe:1",
            ],
            stdout=out,
            check=True,
        )

    with pytest.raises(AudioTooLong) as caught:
        await prepare_audio(path, tmp_path, config=AudioConfig(max_duration=10.0))
    # Decoding stops just past the limit instead of running through the whole file.
    assert caught.value.duration == pytest.approx(11.0, abs=0.2)


def test_every_audio_error_has_its_reason() -> None:
    errors = (NoAudioStream, EmptyAudio, UndecodableAudio, AudioTooLong, UnsupportedFormat)
    assert {cls.reason for cls in errors} == set(AudioErrorReason)
    assert all(issubclass(cls, AudioError) for cls in errors)


# ------------------------------------------------------------------------- what a file claims


@pytest.fixture(scope="module")
def liar(media: Path) -> Path:
    """Says 2 s in its header, holds 40 s."""
    return lying_ogg(media / "liar.ogg", real=40.0, claimed=2.0)


async def test_a_lying_header_is_only_a_claim_the_decoded_length_is_the_real_one(
    liar: Path, tmp_path: Path
) -> None:
    info = await probe(liar, config=CONFIG)
    prepared = await prepare_audio(liar, tmp_path, config=CONFIG, info=info)

    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert prepared.duration == pytest.approx(40.0, abs=0.1)
    # The chunks cover the whole real recording, and nothing but it.
    assert prepared.chunks[0].start == 0.0 and prepared.chunks[-1].end == prepared.duration


async def test_audio_that_changes_format_midway_is_charged_for_all_of_it(media: Path, tmp_path: Path) -> None:
    # Two MP3s end to end, mono 44.1 kHz then stereo 22.05 kHz: ffmpeg decodes them in two goes.
    parts = []
    for name, rate, channels in (("first", 44100, "1"), ("second", 22050, "2")):
        part = media / f"{name}.mp3"
        ffmpeg("-f", "lavfi", "-i", f"sine=f=300:r={rate}:d=5", "-ac", channels, str(part))
        parts.append(part.read_bytes())
    path = media / "changing.mp3"
    path.write_bytes(b"".join(parts))

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    assert prepared.duration == pytest.approx(10.0, abs=0.2)


@pytest.mark.parametrize("name", ["voice.ogg", "memo.m4a"])
async def test_the_first_piece_keeps_the_first_packet(
    gapped: tuple[Path, list[Silence]], media: Path, tmp_path: Path, name: str
) -> None:
    # Opus and AAC streams start before zero (pre-skip, priming): a cut at 0 would drop a packet.
    wav, _ = gapped
    path = media / f"first-{name}"
    ffmpeg("-i", str(wav), *ACCEPTED[name][0], str(path))

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    first = prepared.chunks[0].path.read_bytes()
    packets = subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-c",
            "copy",
            "-t",
            "1",
            "-f",
            "data",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert packets[:200] in first  # the source's very first packet is in the first piece


async def test_chained_ogg_streams_are_copied_whole(liar: Path, tmp_path: Path) -> None:
    # Each chained stream's timestamps start again at zero: no piece may lose the last one.
    prepared = await prepare_audio(liar, tmp_path, config=CONFIG)

    assert prepared.copied and len(prepared.chunks) == 3
    await assert_chunk_files(prepared.chunks, codec="opus", suffix=".ogg")


async def test_a_lying_header_past_the_limit_is_refused_with_its_real_length(
    liar: Path, tmp_path: Path
) -> None:
    config = AudioConfig(max_duration=30.0, max_chunk_seconds=20.0)
    info = await probe(liar, config=config)  # the header's 2 s pass

    with pytest.raises(AudioTooLong) as caught:
        await prepare_audio(liar, tmp_path, config=config, info=info)

    assert caught.value.duration == pytest.approx(40.0, abs=0.1) and caught.value.exact
    # Far past the limit, decoding stops at twice the limit: "more than 20 s".
    with pytest.raises(AudioTooLong) as capped:
        await prepare_audio(liar, tmp_path, config=AudioConfig(max_duration=10.0), info=info)
    assert capped.value.duration == pytest.approx(20.0, abs=0.2) and not capped.value.exact


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
async def test_playlists_and_file_lists_are_refused_and_never_followed(
    continuous: Path, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "target.mp3"
    shutil.copy(continuous, target)
    if kind == "hls":
        path = tmp_path / "list.m3u8"
        path.write_bytes(hls_playlist(target))
    else:
        path = tmp_path / "list.ffconcat"
        path.write_bytes(ffconcat_list(target))
    work = tmp_path / "work"
    work.mkdir()

    with pytest.raises(UnsupportedFormat) as caught:
        await probe(path, config=CONFIG)
    assert caught.value.reason == "unsupported_format"
    # Even past the probe (an info made up by a caller), ffmpeg refuses to open the list.
    info = await probe(continuous, config=CONFIG)
    with pytest.raises(UndecodableAudio):
        await prepare_audio(path, work, config=CONFIG, info=info)
    assert list(work.iterdir()) == []


async def test_a_path_is_always_a_file_never_a_protocol(
    continuous: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative name like "concat:a|b" would be ffmpeg's concat protocol; here it is a file.
    monkeypatch.chdir(tmp_path)
    shutil.copy(continuous, tmp_path / "concat:a.mp3|b.mp3")

    info = await probe(Path("concat:a.mp3|b.mp3"), config=CONFIG)

    assert info.container == "mp3" and info.duration == pytest.approx(50.0, abs=0.1)


# ------------------------------------------------------------------------------------ normalize


async def test_normalize_makes_mono_16k_opus_and_finds_the_silences(
    gapped: tuple[Path, list[Silence]], tmp_path: Path, binary: str
) -> None:
    path, gaps = gapped

    normalized = await normalize(path, tmp_path, config=AudioConfig(ffmpeg=binary))

    assert normalized.path.suffix == ".ogg"
    assert opus_head(normalized.path) == (1, 16000)
    assert normalized.duration == pytest.approx(sum(TONES) + GAP * (len(TONES) - 1), abs=0.1)
    # ~24 kbit/s: a fraction of the 44.1 kHz stereo WAV it came from.
    assert normalized.path.stat().st_size < normalized.duration * 40_000 / 8
    assert len(normalized.silences) == len(gaps)
    for found, known in zip(normalized.silences, gaps, strict=True):
        assert found.start == pytest.approx(known.start, abs=0.05)
        assert found.end == pytest.approx(known.end, abs=0.05)


# ------------------------------------------------------------------------------------------ cut


async def test_cuts_land_in_the_middle_of_silences(
    gapped: tuple[Path, list[Silence]], tmp_path: Path
) -> None:
    path, gaps = gapped

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    plans = [chunk.plan for chunk in prepared.chunks]
    assert len(plans) == 3
    assert all(not plan.hard_cut and plan.overlap == 0 for plan in plans)
    assert all(plan.duration <= 20.0 for plan in plans)
    assert plans[0].start == 0 and plans[-1].end == prepared.duration
    for cut in boundaries(plans):
        assert inside(cut, gaps, margin=0.3), f"cut at {cut:.2f} s is not well inside a known silence {gaps}"
        assert inside(cut, prepared.silences), f"cut at {cut:.2f} s is not in a detected silence"
    for before, after in itertools.pairwise(plans):
        assert after.start == before.end
    await assert_chunk_files(prepared.chunks, codec="opus", suffix=".ogg")


async def test_no_silence_near_the_boundary_gives_hard_cuts_with_overlap(
    continuous: Path, tmp_path: Path
) -> None:
    prepared = await prepare_audio(continuous, tmp_path, config=CONFIG)

    plans = [chunk.plan for chunk in prepared.chunks]
    assert prepared.silences == ()
    assert len(plans) == 3
    assert not plans[0].hard_cut
    for before, after in itertools.pairwise(plans):
        assert after.hard_cut
        assert after.overlap == pytest.approx(2.0)
        assert after.start == pytest.approx(before.end - 2.0)
    assert all(plan.duration <= 20.0 for plan in plans)
    await assert_chunk_files(prepared.chunks, codec="mp3", suffix=".mp3")


async def test_a_short_file_is_one_chunk_without_cutting(continuous: Path, tmp_path: Path) -> None:
    prepared = await prepare_audio(continuous, tmp_path, config=AudioConfig())

    assert len(prepared.chunks) == 1
    assert prepared.chunks[0].plan == ChunkPlan(0, 0.0, prepared.duration)
    await assert_chunk_files(prepared.chunks, codec="mp3", suffix=".mp3")


async def test_audio_too_big_to_copy_in_full_length_pieces_is_re_encoded(
    continuous: Path, tmp_path: Path
) -> None:
    # 128 kbit/s MP3: under 100 KB, a copied piece could hold 5 s of the 20 s asked.
    config = AudioConfig(max_chunk_seconds=20.0, max_chunk_bytes=100_000)

    prepared = await prepare_audio(continuous, tmp_path, config=config)

    assert not prepared.copied
    assert len(prepared.chunks) == 3
    for chunk in prepared.chunks:
        assert opus_head(chunk.path) == (1, 16000)
        assert chunk.path.stat().st_size <= config.max_chunk_bytes


async def assert_chunk_files(chunks: Sequence[object], *, codec: str, suffix: str) -> None:
    from aisha.transcription.audio import AudioChunk

    for chunk in chunks:
        assert isinstance(chunk, AudioChunk)
        assert chunk.path.name == f"chunk-{chunk.index:04d}{suffix}"
        info = await probe(chunk.path)
        assert [s.codec for s in info.audio_streams] == [codec]
        assert info.duration == pytest.approx(chunk.plan.duration, abs=0.1)
        assert chunk.path.stat().st_size <= CONFIG.max_chunk_bytes


def test_chunks_also_respect_the_byte_limit() -> None:
    # 1 MB at 24 kbit/s is ~333 s; with the VBR margin chunks stay well under it.
    config = AudioConfig(max_chunk_seconds=600, max_chunk_bytes=1_000_000)
    assert config.chunk_seconds == pytest.approx(1_000_000 * 8 / 24_000 * 0.8)


# ------------------------------------------------------------------------------ stream copy

# What people send, and what the speech API gets of it: (options to make it from the gapped WAV,
# the codec of the pieces, their suffix, how far a cut may land from its plan: one packet).
ACCEPTED = {
    "voice.ogg": (["-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "32k"], "opus", ".ogg", 0.05),
    "song.mp3": (["-c:a", "libmp3lame", "-b:a", "128k"], "mp3", ".mp3", 0.05),
    "memo.m4a": (["-c:a", "aac", "-b:a", "96k"], "aac", ".m4a", 0.05),
    "raw.aac": (["-c:a", "aac", "-b:a", "96k"], "aac", ".m4a", 0.05),  # ADTS, no MP4 around it
    "clip.webm": (["-c:a", "libopus", "-b:a", "32k"], "opus", ".ogg", 0.05),
    "take.flac": (["-c:a", "flac"], "flac", ".flac", 0.05),  # re-encoded losslessly, see audio/cut.py
}
RE_ENCODED = {
    "note.wav": ["-ac", "1", "-ar", "16000"],  # uncompressed: far bigger than the Opus it becomes
    "old.wma": ["-c:a", "wmav2"],
    "studio.aiff": [],  # big-endian PCM
    "lossless.m4a": ["-c:a", "alac"],  # a container the API reads, a codec it doesn't
}


async def assert_same_audio(prepared: PreparedAudio, gaps: Sequence[Silence], tolerance: float) -> None:
    """Laid end to end, the pieces hold the recording as it was: every pause where it was."""
    for chunk in prepared.chunks:
        heard = (await scan(chunk.path, config=CONFIG)).silences
        inner = [s for s in heard if s.start > 0.1 and s.end < chunk.plan.duration - 0.1]
        expected = [g for g in gaps if chunk.start < g.start and g.end < chunk.end]
        assert len(inner) == len(expected), (chunk.path.name, inner, expected)
        for found, known in zip(inner, expected, strict=True):
            assert found.start + chunk.start == pytest.approx(known.start, abs=tolerance)
            assert found.end + chunk.start == pytest.approx(known.end, abs=tolerance)


@pytest.mark.parametrize("name", list(ACCEPTED))
async def test_what_the_api_reads_is_cut_by_copying_the_stream(
    gapped: tuple[Path, list[Silence]], media: Path, tmp_path: Path, name: str
) -> None:
    wav, gaps = gapped
    options, codec, suffix, tolerance = ACCEPTED[name]
    path = media / name
    ffmpeg("-i", str(wav), *options, str(path))
    info = await probe(path, config=CONFIG)

    prepared = await prepare_audio(path, tmp_path, config=CONFIG, info=info)

    assert prepared.copied
    assert [s.codec for s in info.audio_streams] == [codec]
    assert prepared.duration == pytest.approx(sum(TONES) + GAP * (len(TONES) - 1), abs=0.1)
    plans = [chunk.plan for chunk in prepared.chunks]
    assert len(plans) == 3 and not any(plan.hard_cut for plan in plans)
    for cut in boundaries(plans):
        assert inside(cut, gaps, margin=0.3)
    await assert_chunk_files(prepared.chunks, codec=codec, suffix=suffix)
    await assert_same_audio(prepared, gaps, tolerance)


async def test_a_videos_sound_is_copied_out_and_its_picture_left(
    gapped: tuple[Path, list[Silence]], media: Path, tmp_path: Path
) -> None:
    wav, gaps = gapped
    path = media / "talk.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=d=50:s=160x120:r=10", "-i", str(wav), "-map", "0:v", "-map", "1:a",
        "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path),
    )  # fmt: skip

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    assert prepared.copied and len(prepared.chunks) == 3
    await assert_chunk_files(prepared.chunks, codec="aac", suffix=".m4a")
    assert all(streams(chunk.path) == ["Audio: aac"] for chunk in prepared.chunks)
    await assert_same_audio(prepared, gaps, 0.05)


@pytest.mark.parametrize("name", list(RE_ENCODED))
async def test_what_the_api_does_not_read_is_re_encoded(
    gapped: tuple[Path, list[Silence]], media: Path, tmp_path: Path, name: str
) -> None:
    wav, gaps = gapped
    path = media / name
    ffmpeg("-i", str(wav), *RE_ENCODED[name], str(path))

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    assert not prepared.copied
    assert len(prepared.chunks) == 3
    await assert_chunk_files(prepared.chunks, codec="opus", suffix=".ogg")
    assert all(opus_head(chunk.path) == (1, 16000) for chunk in prepared.chunks)
    await assert_same_audio(prepared, gaps, 0.1)  # WMA's own frames are 46 ms


async def test_a_piece_over_the_size_limit_is_re_encoded_on_its_own(
    gapped: tuple[Path, list[Silence]], media: Path, tmp_path: Path
) -> None:
    wav, gaps = gapped
    # FLAC beside a picture: the header tells no bitrate for the sound, so it is copied, and
    # every 20 s piece turns out at over 300 KB.
    path = media / "lossless.mkv"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc=d=50:s=160x120:r=10", "-i", str(wav), "-map", "0:v", "-map", "1:a",
        "-c:v", "mpeg4", "-c:a", "flac", "-shortest", str(path),
    )  # fmt: skip
    config = AudioConfig(max_chunk_seconds=20.0, max_chunk_bytes=300_000)

    prepared = await prepare_audio(path, tmp_path, config=config)

    assert len(prepared.chunks) == 3
    assert [p.name for p in sorted(tmp_path.iterdir())] == [f"chunk-000{i}.ogg" for i in range(3)]
    for chunk in prepared.chunks:
        assert opus_head(chunk.path) == (1, 16000)
        assert chunk.path.stat().st_size <= config.max_chunk_bytes
        assert (await probe(chunk.path)).duration == pytest.approx(chunk.plan.duration, abs=0.1)
    await assert_same_audio(prepared, gaps, 0.05)


# ------------------------------------------------------------------------------ real speech


@pytest.fixture(scope="module")
def speech(media: Path) -> tuple[Path, list[Silence]]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): no synthetic speech to cut")
    inputs: list[str] = []
    for i, sentence in enumerate(SENTENCES):
        wav = media / f"sentence-{i}.wav"
        subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(wav), sentence], check=True)
        inputs += ["-i", str(wav)]
    # Each sentence, then 1.2 s of silence; the concat filter keeps exact sample counts.
    graph = (
        "".join(f"[{i}]aresample=22050,apad=pad_dur=1.2[s{i}];" for i in range(len(SENTENCES)))
        + "".join(f"[s{i}]" for i in range(len(SENTENCES)))
        + f"concat=n={len(SENTENCES)}:v=0:a=1[out]"
    )
    path = media / "speech.mp3"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", str(path))
    pauses, t = [], 0.0
    for i in range(len(SENTENCES)):
        with wave.open(str(media / f"sentence-{i}.wav")) as w:
            seconds = w.getnframes() / w.getframerate()
        pauses.append(Silence(t + seconds, t + seconds + 1.2))
        t += seconds + 1.2
    return path, pauses


async def test_real_speech_is_cut_between_sentences(
    speech: tuple[Path, list[Silence]], tmp_path: Path
) -> None:
    path, pauses = speech

    prepared = await prepare_audio(path, tmp_path, config=CONFIG)

    plans = [chunk.plan for chunk in prepared.chunks]
    assert prepared.duration > 40  # long enough to need cutting
    assert len(plans) >= 3
    assert not any(plan.hard_cut for plan in plans)
    for cut in boundaries(plans):
        assert inside(cut, prepared.silences), f"cut at {cut:.2f} s falls in speech"
        assert inside(cut, pauses), f"cut at {cut:.2f} s is not in a pause between sentences {pauses}"
    await assert_chunk_files(prepared.chunks, codec="mp3", suffix=".mp3")


@pytest.fixture(scope="module")
def run_on(media: Path) -> Path:
    """Speech whose sentences are only 0.2 s apart (no silence to cut at) as an Opus voice note."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): no synthetic speech to cut")
    inputs: list[str] = []
    for i, sentence in enumerate(SENTENCES * 2):
        wav = media / f"run-on-{i}.wav"
        subprocess.run([espeak, "-v", "en", "-s", "170", "-w", str(wav), sentence], check=True)
        inputs += ["-i", str(wav)]
    n = len(SENTENCES) * 2
    # espeak-ng leaves some silence around each sentence: trim it, then 0.2 s between sentences.
    trim = "silenceremove=start_periods=1:start_threshold=-50dB,areverse," * 2
    graph = (
        "".join(f"[{i}]aresample=22050,{trim}apad=pad_dur=0.2[s{i}];" for i in range(n))
        + "".join(f"[s{i}]" for i in range(n))
        + f"concat=n={n}:v=0:a=1[out]"
    )
    path = media / "run-on.ogg"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", *ACCEPTED["voice.ogg"][0], str(path))
    return path


def peak_db(samples: bytes) -> float:
    values = struct.unpack(f"<{len(samples) // 2}h", samples)
    return 20 * math.log10(max(1, *map(abs, values)) / 32768)


def edges_db(path: Path, seconds: float = 0.04) -> tuple[float, float]:
    """The loudest sample of the first and the last ``seconds`` of ``path``, in dBFS."""
    pcm = subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path), "-ac", "1", "-ar", "8000",
         "-f", "s16le", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    edge = round(seconds * 8000) * 2
    return peak_db(pcm[:edge]), peak_db(pcm[-edge:])


async def test_hard_cuts_start_and_end_pieces_between_words(run_on: Path, tmp_path: Path) -> None:
    # No silence long enough for a clean cut: the cuts are hard, but each piece still starts and
    # ends in a short gap between words, so no word is cut in half on either side of the overlap.
    prepared = await prepare_audio(run_on, tmp_path, config=CONFIG)

    plans = [chunk.plan for chunk in prepared.chunks]
    assert prepared.copied and prepared.silences == ()
    assert len(plans) >= 3 and all(plan.hard_cut for plan in plans[1:])
    for before, after in itertools.pairwise(plans):
        assert 1.0 <= after.overlap <= 4.0  # half to twice the 2 s asked for
        assert after.start == pytest.approx(before.end - after.overlap)
    for chunk in prepared.chunks:
        head, tail = edges_db(chunk.path)
        first, last = chunk.index == 0, chunk.index == len(plans) - 1
        assert first or head < CONFIG.silence_noise_db, f"{chunk.path.name} starts in a word ({head:.0f} dB)"
        assert last or tail < CONFIG.silence_noise_db, f"{chunk.path.name} ends in a word ({tail:.0f} dB)"


def test_plan_puts_a_hard_cut_and_the_next_start_in_the_longest_gaps_near_them() -> None:
    gaps = [
        Silence(46.0, 46.1),
        Silence(47.5, 47.7),
        Silence(48.4, 48.5),
        Silence(49.9, 50.2),
        Silence(53.0, 53.2),
    ]

    plans = plan_chunks(100.0, [], max_chunk=60.0, window=10.0, overlap=2.0, gaps=gaps)

    # The longest gap near the target (50), then the longest one to four seconds before that.
    assert len(plans) == 2 and plans[1].hard_cut
    assert plans[0].end == pytest.approx(50.05)
    assert plans[1].start == pytest.approx(47.6)
    assert plans[1].overlap == pytest.approx(50.05 - 47.6)


# ----------------------------------------------------------------------------- the subprocess


def ffmpeg_children() -> set[int]:
    """Live (not zombie) ffmpeg processes whose parent is this test process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid() and "ffmpeg" in comm and state != "Z":
            found.add(int(entry.name))
    return found


ENDLESS = ["-re", "-f", "lavfi", "-i", "sine=r=8000", "-f", "null", "-"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to see child processes")
async def test_cancelling_kills_ffmpeg() -> None:
    task = asyncio.create_task(run_ffmpeg(ENDLESS, timeout=60))
    for _ in range(50):
        await asyncio.sleep(0.05)
        if ffmpeg_children():
            break
    assert ffmpeg_children(), "ffmpeg did not start"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert ffmpeg_children() == set()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to see child processes")
async def test_a_run_over_its_timeout_is_killed() -> None:
    with pytest.raises(FFmpegTimeout):
        await run_ffmpeg(ENDLESS, timeout=0.5)

    assert ffmpeg_children() == set()


async def test_stderr_is_captured() -> None:
    result = await run_ffmpeg(["-i", "/nonexistent/input.wav", "-f", "null", "-"], timeout=30)

    assert result.returncode != 0
    assert "No such file or directory" in result.stderr_tail


# ------------------------------------------------------------------------------- plan (pure)


def test_plan_prefers_the_longest_silence_in_the_window() -> None:
    silences = [Silence(48.0, 48.5), Silence(52.0, 53.5), Silence(10.0, 12.0)]

    plans = plan_chunks(100.0, silences, max_chunk=60.0, window=10.0, overlap=2.0)

    assert [(p.start, p.end) for p in plans] == [(0.0, 52.75), (52.75, 100.0)]


def test_plan_cut_in_a_silence_reaching_past_the_window_stays_inside_both() -> None:
    plans = plan_chunks(100.0, [Silence(55.0, 80.0)], max_chunk=60.0, window=10.0)

    assert plans[0].end == 60.0  # the silence's middle (67.5) would make the chunk too long


def test_plan_short_audio_is_one_chunk() -> None:
    assert plan_chunks(5.0, [], max_chunk=20.0) == [ChunkPlan(0, 0.0, 5.0)]
    assert plan_chunks(0.0, [], max_chunk=20.0) == []


@settings(max_examples=300, deadline=None)
@given(
    duration=st.floats(min_value=0.5, max_value=20_000),
    max_chunk=st.floats(min_value=10, max_value=900),
    window=st.floats(min_value=0, max_value=60),
    overlap=st.floats(min_value=0, max_value=5),
    raw=st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 5)), max_size=60),
)
def test_plan_invariants(
    duration: float, max_chunk: float, window: float, overlap: float, raw: list[tuple[float, float]]
) -> None:
    silences = sorted(
        (Silence(a * duration, min(duration, a * duration + d)) for a, d in raw), key=lambda s: s.start
    )

    plans = plan_chunks(duration, silences, max_chunk=max_chunk, window=window, overlap=overlap)

    assert plans[0].start == 0.0
    assert plans[-1].end == duration
    assert [p.index for p in plans] == list(range(len(plans)))
    for plan in plans:
        assert 0 < plan.duration <= max_chunk + 1e-6
    for before, after in itertools.pairwise(plans):
        if after.hard_cut:
            assert after.overlap > 0 or overlap == 0
            assert after.start == pytest.approx(before.end - after.overlap)
        else:
            assert after.overlap == 0
            assert after.start == before.end
            assert inside(before.end, silences), "a cut that is not hard must be inside a silence"
    # Never more chunks than needed with a quarter of each chunk spent on finding a silence.
    assert len(plans) <= max(1, int(duration / (max_chunk / 2)) + 2)


@settings(max_examples=300, deadline=None)
@given(
    duration=st.floats(min_value=0.5, max_value=20_000),
    max_chunk=st.floats(min_value=10, max_value=900),
    overlap=st.floats(min_value=0.1, max_value=5),
    raw=st.lists(st.tuples(st.floats(0, 1), st.floats(0.1, 0.5)), max_size=200),
)
def test_plan_with_gaps_only_cuts_hard_in_gaps_and_starts_in_them(
    duration: float, max_chunk: float, overlap: float, raw: list[tuple[float, float]]
) -> None:
    gaps = sorted(
        (Silence(a * duration, min(duration, a * duration + d)) for a, d in raw), key=lambda s: s.start
    )

    plans = plan_chunks(duration, [], max_chunk=max_chunk, overlap=overlap, gaps=gaps)

    asked = min(overlap, max_chunk / 8)  # the overlap as clamped for short chunks
    assert plans[0].start == 0.0 and plans[-1].end == duration
    for plan in plans:
        assert 0 < plan.duration <= max_chunk + 1e-6
    for before, after in itertools.pairwise(plans):
        assert after.hard_cut and before.start < after.start
        assert after.start == pytest.approx(before.end - after.overlap)
        assert asked / 2 - 1e-6 <= after.overlap <= 2 * asked + 1e-6
        if after.overlap != asked:  # not the fallback: the next piece starts in a gap
            assert inside(after.start, gaps)
