"""Test media shared by the end-to-end and browser tests."""

from __future__ import annotations

import functools
import io

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
