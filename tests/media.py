"""Test media shared by the end-to-end and browser tests."""

from __future__ import annotations

import functools
import io
import subprocess
from pathlib import Path

import skimage.data
from PIL import Image, ImageEnhance, ImageOps


@functools.cache
def _astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


def _jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


@functools.cache
def face_photo(i: int) -> bytes:
    """The astronaut cropped, mirrored, lit and tilted differently: no two are near-duplicates."""
    left, top = (i % 4) * 16, (i // 4) * 14
    im = _astronaut().crop((left, top, left + 430, top + 430)).resize((600, 600), Image.Resampling.LANCZOS)
    if i % 2:
        im = ImageOps.mirror(im)
    im = ImageEnhance.Brightness(im).enhance(0.9 + 0.04 * (i % 4))
    return _jpeg(im.rotate((i % 3 - 1) * 8, resample=Image.Resampling.BICUBIC, fillcolor=(90, 110, 140)))


# Variants measured to be pairwise more than 12 bits apart in perceptual hash (the limit is 10).
DISTINCT = (0, 1, 2, 3, 4, 5, 6, 8, 9, 10)


def _ffmpeg(*args: str) -> None:
    from aisha.transcription.audio import find_ffmpeg

    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def lying_ogg(path: Path, *, real: float, claimed: float) -> Path:
    """An Ogg/Opus file whose header claims ``claimed`` seconds and that holds ``real``.

    Two chained Ogg streams: ``real - claimed`` seconds of tone, then ``claimed`` seconds. ffmpeg
    reads the length from the last page's granule position, which belongs to the second stream,
    while decoding plays both.
    """
    parts = []
    for name, seconds, freq in (("first", real - claimed, 440), ("last", claimed, 660)):
        part = path.with_name(f"{path.stem}-{name}.ogg")
        _ffmpeg(
            "-f", "lavfi", "-i", f"sine=f={freq}:r=48000:d={seconds}", "-c:a", "libopus", "-b:a", "16k", str(part)
        )  # fmt: skip
        parts.append(part.read_bytes())
        part.unlink()
    path.write_bytes(b"".join(parts))
    return path


def hls_playlist(target: Path) -> bytes:
    """An HLS playlist naming a local file: a text file ffmpeg would follow to read another."""
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:600\n#EXTINF:600,\nfile://{target}\n#EXT-X-ENDLIST\n".encode()


def ffconcat_list(target: Path) -> bytes:
    """An ffconcat script naming a local file (read relative to the script's folder)."""
    return f"ffconcat version 1.0\nfile '{target.name}'\n".encode()


def large_wav(path: Path, *, seconds: float = 41.0) -> Path:
    """About 60 MB of WAV made cheaply: a short two-tone recording at a high bitrate (192 kHz,
    stereo, 32-bit: 1.5 MB a second), far over the public Bot API's 20 MB download limit."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"sine=f=440:r=192000:d={seconds}",
        "-f", "lavfi", "-i", f"sine=f=660:r=192000:d={seconds}",
        "-filter_complex", "[0:a][1:a]amerge=inputs=2", "-c:a", "pcm_s32le", str(path),
    )  # fmt: skip
    return path
