"""Photos from a phone camera are checked on a copy libjpeg decodes at 1/2, 1/4 or 1/8 scale, and
the limits tuned at the measuring scale keep their meaning there: scikit-image's real photos,
enlarged to 12 megapixels with sensor grain, get the verdicts their small originals get."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from aisha.avatars.imaging import decode_image
from aisha.avatars.validation import PhotoValidator, RejectReason

SIZE = (4000, 3000)


def _grain(im: Image.Image) -> Image.Image:
    # Without grain an enlarged picture is unnaturally smooth (and compresses to a tiny file).
    noisy = np.asarray(im, dtype=np.int16) + np.random.default_rng(3).normal(0, 3, (im.height, im.width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90)
    return out.getvalue()


@functools.cache
def portrait() -> Image.Image:
    """12 MP: the astronaut, 2600 px tall, on the coffee photo as a backdrop."""
    canvas = Image.fromarray(skimage.data.coffee()).resize(SIZE, Image.Resampling.BICUBIC)
    canvas.paste(
        Image.fromarray(skimage.data.astronaut()).resize((2600, 2600), Image.Resampling.LANCZOS), (700, 200)
    )
    return _grain(canvas)


@functools.cache
def cup() -> Image.Image:
    """12 MP: the coffee cup alone."""
    return _grain(Image.fromarray(skimage.data.coffee()).resize(SIZE, Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def validator() -> PhotoValidator:
    checker = PhotoValidator()
    checker.preload()
    return checker


def test_a_12_megapixel_jpeg_is_decoded_at_a_quarter_scale() -> None:
    decoded = decode_image(_jpeg(cup()), max_side=1024, min_short_side=512)
    assert (decoded.width, decoded.height) == SIZE  # what the verdict reports: the full resolution
    assert decoded.image.size == (1000, 750)  # what the checks look at: short side still ≥ 512


def test_a_12_megapixel_portrait_is_accepted_with_one_face(validator: PhotoValidator) -> None:
    verdict = validator.validate(_jpeg(portrait()))
    assert verdict.accepted, verdict.metrics
    assert (verdict.width, verdict.height) == SIZE
    assert len(verdict.metrics["faces"]) == 1
    x, y, side, _ = verdict.metrics["faces"][0]["box"]  # in full-resolution pixels
    assert x >= 700 and y >= 200 and x + side <= 700 + 2600 and side > 400


def test_a_12_megapixel_photo_of_a_cup_has_no_face(validator: PhotoValidator) -> None:
    verdict = validator.validate(_jpeg(cup()))
    assert verdict.reason is RejectReason.NO_FACE, verdict.metrics


def test_a_blurred_12_megapixel_portrait_is_blurry(validator: PhotoValidator) -> None:
    # The blur the small-photo test uses (2 px on 512), scaled up with the picture.
    verdict = validator.validate(_jpeg(portrait().filter(ImageFilter.GaussianBlur(2 * 2600 / 512))))
    assert verdict.reason is RejectReason.BLURRY, verdict.metrics
    assert verdict.metrics["face_sharpness"] < 15


def test_a_12_megapixel_duplicate_of_a_small_copy_is_found(validator: PhotoValidator) -> None:
    small = validator.validate(_jpeg(portrait().resize((1024, 768), Image.Resampling.LANCZOS)))
    assert small.accepted and small.perceptual_hash is not None
    big = validator.validate(_jpeg(portrait()), accepted_hashes=[small.perceptual_hash])
    assert big.reason is RejectReason.DUPLICATE
    assert big.metrics["duplicate_distance"] <= 2
