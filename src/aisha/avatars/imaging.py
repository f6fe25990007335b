"""Safe decoding and normalizing of user photos, perceptual hashes and the trainer's zip archive.

Everything here is CPU-bound and synchronous: callers run it in a thread pool (see
`PhotoValidator.validate_async`). OpenCV, Pillow's decoders and hashlib release the GIL.

numpy and OpenCV are imported where they are used: a process that never touches pixels (an API
process that takes no photos) doesn't pay their start-up time and memory.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

import pillow_heif
from PIL import Image, ImageCms, UnidentifiedImageError

from aisha.avatars.formats import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# Registers the "HEIF" format (iPhone photos) with Pillow once per process.
pillow_heif.register_heif_opener()

_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90° (width and height trade places)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Errors Pillow and its plugins raise on damaged data once the header has been recognised.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zipfile.BadZipFile)


class ImageDecodeError(Exception):
    """The bytes can't become a picture we accept."""


class NotAnImageError(ImageDecodeError):
    """No supported image format recognises the bytes (text, PDF, TIFF, ...)."""


class CorruptImageError(ImageDecodeError):
    """The header is an image's, but the pixel data is damaged or truncated."""


class TooManyPixelsError(ImageDecodeError):
    """The declared size is over the pixel limit (a decompression bomb or a panorama)."""

    def __init__(self, width: int | None, height: int | None, limit: int) -> None:
        super().__init__(f"{width}x{height} is over the limit of {limit} pixels")
        self.width = width
        self.height = height


@dataclass(frozen=True, slots=True)
class DecodedImage:
    format: str
    # Full-resolution size as the user sees it, after EXIF orientation.
    width: int
    height: int
    # RGB, EXIF-transposed, long side at most the requested `max_side` (JPEGs are decoded at a
    # reduced DCT scale, so a 12 MP photo never exists in memory at full size).
    image: Image.Image
    icc_profile: bytes | None = None


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
    min_short_side: int | None = None,
    formats: tuple[str, ...] = SUPPORTED_FORMATS,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> DecodedImage:
    """Decode untrusted bytes: format allow-list, pixel limit before decoding, EXIF orientation, RGB.

    `max_side` caps the long side of the result. `min_short_side` lets a JPEG decode at the coarsest
    DCT scale (1/2, 1/4, 1/8) whose short side is still at least that: what a check needs, and far
    cheaper than decoding near `max_side` and resizing (12 MP at 1/4 is 1000×750, at 1/2 2000×1500).
    """
    try:
        im = Image.open(io.BytesIO(data), formats=_openers(formats))
    except Image.DecompressionBombError as exc:
        # Pillow refuses on its own above twice its global limit, before telling us the size.
        raise TooManyPixelsError(None, None, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(str(exc)) from exc

    if im.format not in formats:  # e.g. MPO when only JPEG is allowed: both come from one opener
        raise NotAnImageError(f"{im.format} is not an accepted format")
    stored_w, stored_h = im.size
    # Checked on the header alone: a bomb is refused before one pixel is decoded. We don't rely on
    # Image.MAX_IMAGE_PIXELS, which is process-global and would need a thread-unsafe warnings filter.
    if stored_w * stored_h > max_pixels:
        raise TooManyPixelsError(stored_w, stored_h, max_pixels)
    image_format = im.format or "unknown"
    try:
        if image_format in ("JPEG", "MPO") and (max_side is not None or min_short_side is not None):
            if min_short_side is not None:
                scale = min_short_side / min(stored_w, stored_h)
            else:
                assert max_side is not None
                scale = max_side / max(stored_w, stored_h)
            if scale < 1:
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly: 4× to 64× fewer pixels to produce.
                im.draft("RGB", (math.ceil(stored_w * scale), math.ceil(stored_h * scale)))
        im.load()
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(stored_w, stored_h, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(str(exc)) from exc
    orientation = _orientation(im)
    icc = im.info.get("icc_profile")
    rgb = to_rgb(im)
    if max_side is not None and max(rgb.size) > max_side:
        rgb = rgb.resize(_fit(rgb.size, max_side), resample, reducing_gap=2.0)
    # The same table as ImageOps.exif_transpose, applied after downscaling so fewer pixels move.
    method = _TRANSPOSE.get(orientation)
    upright = rgb.transpose(method) if method is not None else rgb
    width, height = (stored_h, stored_w) if orientation in _SWAPS_SIDES else (stored_w, stored_h)
    return DecodedImage(
        format=image_format,
        width=width,
        height=height,
        image=upright,
        icc_profile=icc if isinstance(icc, bytes) and icc else None,
    )


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _openers(formats: tuple[str, ...]) -> list[str]:
    # MPO has no opener of its own: Pillow's JPEG opener returns MPO files, so "MPO" alone means JPEG.
    Image.init()
    wanted = {"JPEG" if name.upper() == "MPO" else name.upper() for name in formats}
    return [name for name in Image.OPEN if name in wanted]


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) else 1


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white (a transparent PNG would otherwise turn black)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit or float grayscale: scale to 8 bits instead of letting convert() clip at 255.
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) or 1.0
        return Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def perceptual_hash(image: Image.Image | NDArray[np.uint8]) -> str:
    """64-bit pHash (DCT of a 32×32 grayscale, low 8×8 frequencies against their median) as 16 hex digits.

    Survives resizing, re-encoding, mild brightness changes and light blur; a mirror, a rotation
    of a few degrees or a 10 % crop move it past the default duplicate threshold.
    """
    import cv2
    import numpy as np

    gray = _as_gray(image)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def _as_gray(image: Image.Image | NDArray[np.uint8]) -> NDArray[np.uint8]:
    import cv2
    import numpy as np

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"))
    if image.ndim == 2:
        return image
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def normalize_for_training(
    data: bytes, *, max_side: int = 2048, quality: int = 92, max_pixels: int = DEFAULT_MAX_PIXELS
) -> bytes:
    """The photo as the trainer gets it: upright, sRGB, long side ≤ `max_side`, JPEG, no metadata.

    EXIF (GPS position, device) is dropped on purpose: the archive leaves our machine. Raises an
    `ImageDecodeError` for bytes that `PhotoValidator.validate` would have refused while decoding.
    """
    decoded = decode_image(data, max_pixels=max_pixels, max_side=max_side, resample=Image.Resampling.LANCZOS)
    im = _to_srgb(decoded.image, decoded.icc_profile)
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality, optimize=True, subsampling="4:2:0")
    return out.getvalue()


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    # Phones shoot in Display P3; a trainer that ignores ICC profiles would see washed-out colours.
    if icc is None:
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im  # a broken profile: keep the pixels as they are
    return converted if converted is not None else im


def training_file_name(name: str) -> str:
    """A flat, safe archive member name (no directories, no `..`)."""
    base = PurePosixPath(name.replace("\\", "/")).name.strip()
    if base in ("", ".", "..") or "\x00" in base:
        raise ValueError(f"unusable file name in the training archive: {name!r}")
    return base


def write_training_zip(images: Iterable[tuple[str, bytes]], target: str | os.PathLike[str] | BinaryIO) -> int:
    """Stream (name, bytes) pairs into a zip for the FAL trainer; returns the number of members.

    Entries are written one at a time, so a path or file target holds one photo in memory at once.
    A `name.txt` next to `name.jpg` is taken by the trainer as that photo's caption.
    """
    seen: set[str] = set()
    with zipfile.ZipFile(target, mode="w") as archive:
        for name, payload in images:
            member = training_file_name(name)
            if member in seen:
                raise ValueError(f"duplicate file name in the training archive: {member!r}")
            seen.add(member)
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible archives
            # JPEG/PNG/WebP are compressed already; deflating them costs CPU for nothing.
            is_text = member.lower().endswith((".txt", ".json", ".caption"))
            info.compress_type = zipfile.ZIP_DEFLATED if is_text else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            archive.writestr(info, payload)
    return len(seen)


def build_training_zip(images: Iterable[tuple[str, bytes]]) -> bytes:
    """The same archive as `write_training_zip`, in memory."""
    buffer = io.BytesIO()
    write_training_zip(images, buffer)
    return buffer.getvalue()
