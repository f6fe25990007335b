"""The fake FAL's jobs, deliveries, helpers and documented limits."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha.sandbox.exchanges import Exchange

log = logging.getLogger("aisha.sandbox.fal")

JsonDict = dict[str, Any]
KeyName = Literal["test", "unknown"]
# (prompt, width, height, seed) -> PNG bytes; runs in a thread.
ImageRenderer = Callable[[str, int, int, int], bytes]

_NAMESPACES = frozenset({"workflows", "comfy"})
_IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A valid PNG of one colour (8-bit RGB), encoded with zlib alone."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 6))
        + chunk(b"IEND", b"")
    )


def sign_webhook(
    key: Ed25519PrivateKey, *, request_id: str, user_id: str, timestamp: int | str, body: bytes
) -> dict[str, str]:
    """The four headers FAL sends with a webhook, signed with ``key``."""
    ts = str(timestamp)
    message = f"{request_id}\n{user_id}\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": ts,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


def _app_path(endpoint: str) -> str:
    parts = endpoint.split("/")
    return "/".join(parts[:3] if parts[0] in _NAMESPACES else parts[:2])


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _colour(seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    return rng.randrange(40, 230), rng.randrange(40, 230), rng.randrange(40, 230)


def _answered(exchange: Exchange, body: JsonDict, *, status: int) -> web.Response:
    """A JSON answer, noted on ``exchange`` as the bot received it."""
    response = web.json_response(body, status=status)
    exchange.answered(response)
    return response


def _field_error(field_name: str, msg: str, kind: str = "value_error") -> JsonDict:
    return {"loc": ["body", field_name], "msg": msg, "type": kind}


def _documented_error(loc: list[Any], msg: str, kind: str) -> JsonDict:
    """One item of FAL's documented error ``detail`` list (docs.fal.ai/errors)."""
    return {"loc": loc, "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors/#{kind}"}


# The trainers' documented inputs (fal.ai model pages): name -> accepted JSON types.
_TRAINER_INPUTS: dict[str, dict[str, tuple[type, ...]]] = {
    "fal-ai/flux-lora-portrait-trainer": {
        "images_data_url": (str,),
        "trigger_phrase": (str,),
        "learning_rate": (int, float),
        "steps": (int,),
        "multiresolution_training": (bool,),
        "subject_crop": (bool,),
        "create_masks": (bool,),
        "data_archive_format": (str, type(None)),
        "resume_from_checkpoint": (str,),
    },
    "fal-ai/flux-lora-fast-training": {
        "images_data_url": (str,),
        "trigger_word": (str,),
        "create_masks": (bool,),
        "steps": (int,),
        "is_style": (bool,),
        "is_input_format_already_preprocessed": (bool,),
        "data_archive_format": (str, type(None)),
    },
}
_ARCHIVE_FORMATS = frozenset({"zip"})
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG; WEBP checked apart
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_DOWNLOAD_FAILED = "Failed to download the file. Please check if the URL is accessible."


def _of_type(value: Any, kinds: tuple[type, ...]) -> bool:
    # JSON true is not a number, and 1 is not a boolean.
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _archive_problem(data: bytes) -> str | None:
    """Why ``data`` is not a zip of images FAL could train on, or None."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        corrupt = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return "The archive is not a valid zip file."
    if corrupt is not None:
        return f"The archive is corrupt ({corrupt})."
    images = 0
    for info in archive.infolist():
        name = info.filename.lower()
        if info.is_dir() or name.startswith("__macosx/") or name.endswith(".txt"):
            continue  # captions may sit beside the images
        head = archive.read(info)[:12]
        is_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
        if not name.endswith(_IMAGE_SUFFIXES) or not (head.startswith(_IMAGE_MAGIC) or is_webp):
            return f"Failed to load the image {info.filename!r}: not a supported image."
        images += 1
    if images == 0:
        return "The archive contains no images."
    return None


@dataclass
class FakeFalJob:
    """One accepted submission and what became of it."""

    request_id: str
    endpoint: str
    app: str
    payload: JsonDict
    webhook_url: str | None
    state: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED
    output: JsonDict | None = None
    error: str | None = None
    error_status: int | None = None
    error_type: str | None = None
    # FAL's documented error shape (a list of {loc, msg, type, ...}), when the failure has one.
    error_detail: list[JsonDict] | None = None
    cancel_requested: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    completed_at: float | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class WebhookDelivery:
    request_id: str
    url: str
    status: int  # the receiver's HTTP status; 0 when it could not be reached
    body: bytes
    headers: dict[str, str]
    signed_with: str | None


@dataclass(frozen=True)
class _Refusal:
    status: int
    detail: Any
