"""Files the page uploads, made into what Telegram would deliver: photos as JPEG, media with a duration."""

from __future__ import annotations

import asyncio
import io
import mimetypes
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from aisha.avatars.formats import DEFAULT_MAX_PIXELS
from aisha.sandbox.errors import SandboxError
from aisha.transcription.audio import AudioConfig, AudioError, FFmpegError, NoAudioStream, probe, run_ffmpeg

MAX_FILE_BYTES = 50 * 1024 * 1024  # Telegram's limit for bots' downloads
MAX_PHOTO_PIXELS = DEFAULT_MAX_PIXELS  # the bot refuses more anyway; the sandbox must not decode it
KINDS = ("photo", "document", "voice", "audio", "video")
# Bytes per second, to estimate a length ffmpeg could not measure (voice ~24 kbit/s, music ~128 kbit/s).
_BYTES_PER_SECOND = {"voice": 3_000, "audio": 16_000, "video": 250_000}
_CHUNK = 256 * 1024
_REENCODE_TIMEOUT = 300.0  # seconds; a 50 MB recording takes far less


@dataclass(frozen=True, slots=True)
class Upload:
    name: str
    content_type: str | None
    data: bytes

    @property
    def mime_type(self) -> str:
        given = self.content_type if self.content_type != "application/octet-stream" else None
        return given or mimetypes.guess_type(self.name)[0] or "application/octet-stream"


async def read_form(request: web.Request) -> tuple[dict[str, str], list[Upload]]:
    """The text fields and the files of a multipart form; every file is read to the end (so the
    browser gets the answer) but a file over the limit or an empty one is refused."""
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    too_large: str | None = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
            continue
        if part.filename is None:
            fields[part.name] = await part.text()
            continue
        data = await _read_limited(part)
        if data is None:
            too_large = too_large or part.filename
            continue
        uploads.append(Upload(part.filename, part.headers.get(aiohttp.hdrs.CONTENT_TYPE), data))
    if too_large is not None:
        raise SandboxError(413, "sandbox.error_too_large", name=too_large)
    empty = next((upload.name for upload in uploads if not upload.data), None)
    if empty is not None:
        raise SandboxError(400, "sandbox.error_empty_file", name=empty)
    return fields, uploads


async def _read_limited(part: aiohttp.BodyPartReader) -> bytes | None:
    """The part's bytes; None (the rest drained unread) once it passes MAX_FILE_BYTES."""
    data = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        if len(data) + len(chunk) > MAX_FILE_BYTES:
            while await part.read_chunk(_CHUNK):
                pass
            return None
        data += chunk
    return bytes(data)


async def as_photo(upload: Upload) -> bytes:
    """The picture as Telegram keeps photos: JPEG (anything else Pillow opens is converted)."""
    try:
        return await asyncio.to_thread(_to_jpeg, upload.data)
    except (_TooManyPixels, Image.DecompressionBombError):
        raise SandboxError(
            413, "sandbox.error_too_many_pixels", name=upload.name, megapixels=MAX_PHOTO_PIXELS // 1_000_000
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise SandboxError(400, "sandbox.error_not_image", name=upload.name) from None


class _TooManyPixels(Exception):
    pass


def _to_jpeg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        # Opening read only the header: refuse a huge picture before decoding a single pixel.
        if image.width * image.height > MAX_PHOTO_PIXELS:
            raise _TooManyPixels
        image.load()  # a truncated file fails here, not later in the bot
        if image.format == "JPEG":
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue()


async def as_media(upload: Upload, kind: str, scratch_dir: Path) -> tuple[bytes, int]:
    """The bytes to send and their length in whole seconds. A voice note that is not OGG (browsers
    record WebM) is re-encoded to OGG/Opus, as Telegram's apps record voice."""
    folder = scratch_dir / secrets.token_hex(6)
    source = folder / f"upload{Path(upload.name).suffix[:10]}"
    try:
        await asyncio.to_thread(_write, source, upload.data)
        data = upload.data
        if kind == "voice" and not data.startswith(b"OggS"):
            source = await _reencode_as_voice(source, upload.name)
            data = await asyncio.to_thread(source.read_bytes)
        return data, await _duration(source, upload, kind)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _reencode_as_voice(source: Path, name: str) -> Path:
    target = source.with_name("voice.ogg")
    opus = ["-vn", "-ac", "1", "-c:a", "libopus", "-b:a", "32k"]
    try:
        result = await run_ffmpeg(["-i", str(source), *opus, str(target)], timeout=_REENCODE_TIMEOUT)
    except FFmpegError:
        return source  # no usable ffmpeg: send it as it came
    if result.returncode != 0:
        raise SandboxError(400, "sandbox.error_not_media", name=name)
    return target


async def _duration(path: Path, upload: Upload, kind: str) -> int:
    """Measured with the project's ffmpeg probe; estimated from the size when ffmpeg can't tell (a
    video without sound, no ffmpeg at all). Unplayable audio is refused."""
    try:
        info = await probe(path, config=AudioConfig(max_duration=24 * 3600.0))
        return max(1, round(info.duration))
    except NoAudioStream:
        if kind != "video":
            raise SandboxError(400, "sandbox.error_not_media", name=upload.name) from None
    except AudioError:
        raise SandboxError(400, "sandbox.error_not_media", name=upload.name) from None
    except FFmpegError:
        pass
    return max(1, len(upload.data) // _BYTES_PER_SECOND[kind])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
