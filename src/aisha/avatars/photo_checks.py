"""The checks behind `validation.PhotoValidator`: reasons, thresholds, the face detector (OpenCV's
Haar cascade) and the measures of the whole picture and of the face. The NSFW scan, whose face
boxes the cascade starts from, is in `nsfw_model`.

Faces are found where NudeNet's scan (run for the NSFW check anyway) boxes one: the cascade only
confirms and sizes it in a crop around the box. Searching the whole picture with the cascade cost
2–3× a full decode of a 12 MP JPEG, so it is left for pictures where no box is confirmed (faces too
small for NudeNet's 320 px input, or an NSFW detector without face boxes).

OpenCV and numpy are imported where pixels are handled, so a process that never checks a photo
never loads them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aisha.avatars.formats import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS
from aisha.avatars.nsfw_model import Detection

if TYPE_CHECKING:
    import cv2
    import numpy as np
    from numpy.typing import NDArray

# Sharpness and face detection are measured on a grayscale copy with this short side: Laplacian
# variance depends on scale, so a fixed scale makes one threshold fit every resolution; it is also
# the smallest short side we accept, so the copy is never upscaled for an accepted photo.
MEASURE_SHORT_SIDE = 512
_FACE_CROP_SIDE = 128  # face crops are resized to this before their sharpness is measured
_HAAR_MIN_FACE_PX = 24  # the cascade's own window; smaller faces can't be detected at all
# A model's face box is confirmed by the cascade in a crop reaching this many box sides from its
# centre, looking for faces of these ratios to the box (the cascade's box is ~0.95 of NudeNet's).
_CROP_REACH = 1.0
_CONFIRM_MIN_RATIO = 0.5
_CONFIRM_MAX_RATIO = 1.6
# The crop is shrunk until the smallest face sought fills the cascade's window: the search's cost
# grows with the pixels it scans (5.1 → 2.8 ms for a face box of 85 px), and on bench/photo_verdicts.py's
# 159 photos every verdict stayed the same (face sides grew by up to 6 %).
_CONFIRM_SMALLEST_PX = _HAAR_MIN_FACE_PX


class RejectReason(StrEnum):
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT = "corrupt"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    BLURRY = "blurry"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    FACE_TOO_SMALL = "face_too_small"
    NSFW = "nsfw"
    DUPLICATE = "duplicate"


_NSFW_LABELS = frozenset(
    {
        "FEMALE_GENITALIA_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_EXPOSED",
        "BUTTOCKS_EXPOSED",
    }
)


class ValidationThresholds(BaseModel):
    """Every limit a photo is held to. Defaults were tuned on scikit-image's sample photos
    (astronaut, coffee, chelsea, camera, coins, ...) and synthetic variants of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Decoding.
    max_file_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Refused before decoding (Telegram's cap)."
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="Declared width×height; bombs stop here.")
    allowed_formats: tuple[str, ...] = Field(
        SUPPORTED_FORMATS, min_length=1, description="Pillow format names."
    )
    analysis_max_side: int = Field(
        1024, ge=MEASURE_SHORT_SIDE, description="Long side of the copy the checks run on (JPEG draft mode)."
    )
    # Resolution.
    min_short_side: int = Field(512, gt=0, description="Trainers work at 512–1024 px; smaller photos blur.")
    # Exposure, grayscale 0–255 over the whole picture.
    min_brightness: float = Field(40.0, ge=0, le=255, description="Mean below this: too dark.")
    max_brightness: float = Field(220.0, ge=0, le=255, description="Mean above this: blown out.")
    dark_level: int = Field(10, ge=0, le=255, description="A pixel at or below this is crushed black.")
    max_dark_fraction: float = Field(0.75, ge=0, le=1, description="Share of crushed-black pixels allowed.")
    bright_level: int = Field(245, ge=0, le=255, description="A pixel at or above this is clipped white.")
    max_bright_fraction: float = Field(
        0.6, ge=0, le=1, description="Share of clipped-white pixels allowed (a white studio wall is fine)."
    )
    # Without a detectable face a badly exposed picture is refused for its exposure (the likely cause).
    faceless_bright_fraction: float = Field(
        0.3, ge=0, le=1, description="Clipped-white share, no face found."
    )
    faceless_dark_fraction: float = Field(0.5, ge=0, le=1, description="Crushed-black share, no face found.")
    # Exposure of the face itself (backlit portraits pass the global rule with a black face).
    min_face_brightness: float = Field(45.0, ge=0, le=255)
    max_face_brightness: float = Field(225.0, ge=0, le=255)
    # Sharpness: variance of the Laplacian. With a face it is measured on the face (a sharp face on a
    # blurred background is a good portrait; a sharp background behind a missed face is not).
    min_sharpness: float = Field(40.0, ge=0, description="Whole picture at a 512 px short side.")
    min_face_sharpness: float = Field(15.0, ge=0, description="Face crop resized to 128×128.")
    # Faces: NudeNet's face boxes, each confirmed (and sized) by OpenCV's Haar cascade in a crop
    # around it; only when none is confirmed does the cascade search the whole picture. Confidence
    # is the cascade's final-stage level weight.
    face_confidence: float = Field(
        3.5,
        description="Whole-picture search: a face this certain counts on its own (real faces measured "
        "4.5–8, look-alikes ≤ 2.9).",
    )
    weak_face_confidence: float = Field(
        1.5,
        description="A cascade face this certain counts when it lies in one of the NSFW model's face boxes.",
    )
    face_search_min_fraction: float = Field(
        0.06,
        gt=0,
        le=1,
        description="The whole-picture search skips smaller faces (the small scales cost most time).",
    )
    min_face_fraction: float = Field(0.08, gt=0, le=1, description="Face side / the picture's short side.")
    min_face_px: int = Field(64, gt=0, description="Face side in original pixels.")
    secondary_face_ratio: float = Field(
        0.5, gt=0, le=1, description="Another face at least this size of the main one makes several_faces."
    )
    # NSFW (labels and scores from the NsfwDetector, NudeNet's by default).
    nsfw_labels: frozenset[str] = Field(_NSFW_LABELS, description="Any of these at min score refuses.")
    nsfw_min_score: float = Field(0.5, ge=0, le=1)
    face_labels: frozenset[str] = Field(frozenset({"FACE_FEMALE", "FACE_MALE"}))
    # The second face of a group photo often scores 0.14–0.24. On the 159 composed photos of
    # bench/photo_verdicts.py 0.12–0.13 missed no second face and let in no false one (0.14 missed a
    # face at 0.139; 0.10 let the cascade confirm a mosaic's box at 0.102).
    face_label_min_score: float = Field(
        0.12, ge=0, le=1, description="An NSFW-model face box this certain is checked by the cascade."
    )
    # With a detector that boxes faint faces (NudeNet), a whole-picture cascade face it doesn't box at
    # all is most likely a look-alike: on bench/photo_verdicts.py coins, gravel and mosaics measured
    # 3.5–6.7 and the real faces found there had a box of 0.05–0.11. It thins look-alikes, it
    # doesn't end them: one coin of skimage's coins at 640 px measured 8.9.
    face_support_min_score: float = Field(0.05, ge=0, le=1, description="A face box this faint vouches.")
    unsupported_face_confidence: float = Field(7.0, description="A cascade face no face box vouches for.")
    # Near-duplicates: Hamming distance between 64-bit pHashes (resized copies measure 0–2, a mirrored
    # or different photo 20+).
    duplicate_max_distance: int = Field(10, ge=0, le=64)

    @model_validator(mode="after")
    def _ordered(self) -> ValidationThresholds:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        if self.weak_face_confidence > self.face_confidence:
            raise ValueError("weak_face_confidence must not exceed face_confidence")
        return self


_thread_local = threading.local()


def face_cascade() -> cv2.CascadeClassifier:
    import cv2

    cascade: cv2.CascadeClassifier | None = getattr(_thread_local, "face_cascade", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
        if cascade.empty():
            raise RuntimeError("OpenCV's frontal face Haar cascade could not be loaded")
        _thread_local.face_cascade = cascade
    return cascade


@dataclass(frozen=True, slots=True)
class _Face:
    x: int  # in the measuring copy's pixels
    y: int
    side: int
    confidence: float
    confirmed: bool


@dataclass(frozen=True, slots=True)
class Light:
    """The whole picture's light and sharpness (on the measuring copy)."""

    dark: float
    bright: float
    sharpness: float


def whole_picture(
    gray: NDArray[np.uint8], t: ValidationThresholds, metrics: dict[str, Any]
) -> Light | RejectReason:
    """Too dark or too bright as a whole, or how it is lit and how sharp."""
    import cv2

    brightness = float(gray.mean())
    dark = float((gray <= t.dark_level).mean())
    bright = float((gray >= t.bright_level).mean())
    metrics.update(
        brightness=round(brightness, 1), dark_fraction=round(dark, 3), bright_fraction=round(bright, 3)
    )
    if brightness < t.min_brightness or dark > t.max_dark_fraction:
        return RejectReason.TOO_DARK
    if brightness > t.max_brightness or bright > t.max_bright_fraction:
        return RejectReason.TOO_BRIGHT
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    metrics["sharpness"] = round(sharpness, 1)
    return Light(dark=dark, bright=bright, sharpness=sharpness)


def face_metrics(faces: Sequence[_Face], scale_to_original: float) -> list[dict[str, Any]]:
    return [
        {
            "box": [round(v * scale_to_original) for v in (f.x, f.y, f.side, f.side)],
            "confidence": round(f.confidence, 2),
            "confirmed": f.confirmed,
        }
        for f in faces
    ]


def faceless_reason(light: Light, t: ValidationThresholds) -> RejectReason:
    """Say why the face was likely lost when the picture shows it: that is what the user can fix."""
    if light.bright > t.faceless_bright_fraction:
        return RejectReason.TOO_BRIGHT
    if light.dark > t.faceless_dark_fraction:
        return RejectReason.TOO_DARK
    if light.sharpness < t.min_sharpness:
        return RejectReason.BLURRY
    return RejectReason.NO_FACE


def face_reason(
    gray_full: NDArray[np.uint8],
    gray: NDArray[np.uint8],
    faces: Sequence[_Face],
    scale_to_original: float,
    t: ValidationThresholds,
    metrics: dict[str, Any],
) -> RejectReason | None:
    """The main (largest) face: sharp, alone, large enough and well lit."""
    import cv2

    main = faces[0]
    face_gray = _crop_face(gray_full, main, gray_full.shape[1] / gray.shape[1])
    face_sharpness = float(cv2.Laplacian(face_gray, cv2.CV_64F).var())
    metrics["face_sharpness"] = round(face_sharpness, 1)
    if face_sharpness < t.min_face_sharpness:
        return RejectReason.BLURRY
    if any(f.side >= main.side * t.secondary_face_ratio for f in faces[1:]):
        return RejectReason.SEVERAL_FACES
    face_fraction = main.side / min(gray.shape)
    metrics["face_fraction"] = round(face_fraction, 3)
    if face_fraction < t.min_face_fraction or main.side * scale_to_original < t.min_face_px:
        return RejectReason.FACE_TOO_SMALL
    face_brightness = float(face_gray.mean())
    metrics["face_brightness"] = round(face_brightness, 1)
    if face_brightness < t.min_face_brightness:
        return RejectReason.TOO_DARK
    if face_brightness > t.max_face_brightness:
        return RejectReason.TOO_BRIGHT
    return None


def nsfw_reason(detections: Sequence[Detection], t: ValidationThresholds) -> RejectReason | None:
    nsfw = [d for d in detections if d.label in t.nsfw_labels and d.score >= t.nsfw_min_score]
    return RejectReason.NSFW if nsfw else None


def find_faces(
    gray: NDArray[np.uint8],
    detections: Sequence[Detection] | None,
    t: ValidationThresholds,
    *,
    boxes_faint_faces: bool = False,
) -> list[_Face]:
    """Clearly visible upright faces, largest first, one box per face.

    The NSFW model's face boxes come with its scan for free; the cascade then only looks at a crop
    around each one, to confirm it is an upright frontal face and to size it (a few milliseconds
    instead of the whole-picture search, the dearest step of a check). When the model saw no face
    the cascade confirms, the cascade searches the whole picture: faces too small for the model's
    320 px input, or a detector without face boxes. There a face that no model box covers, not even
    a faint one, must be far more certain (see ValidationThresholds.unsupported_face_confidence).
    """

    def face_boxes(min_score: float) -> list[tuple[int, int, int, int]]:
        return [d.box for d in detections or () if d.label in t.face_labels and d.score >= min_score]

    model_faces = face_boxes(t.face_label_min_score)
    confirmed = [face for box in model_faces if (face := _confirm(gray, box, t)) is not None]
    if confirmed:
        return _one_box_per_face(confirmed)
    vouching = face_boxes(t.face_support_min_score) if boxes_faint_faces else None
    return _search_whole_picture(gray, model_faces, vouching, t)


def _confirm(
    gray: NDArray[np.uint8], box: tuple[int, int, int, int], t: ValidationThresholds
) -> _Face | None:
    """The cascade's most certain face centred in the model's box, searched in a crop around it."""
    import numpy as np

    x, y, w, h = box
    side = max(w, h, 1)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = max(0, round(cx - side * _CROP_REACH)), max(0, round(cy - side * _CROP_REACH))
    crop = gray[y0 : round(cy + side * _CROP_REACH), x0 : round(cx + side * _CROP_REACH)]
    smallest = max(_HAAR_MIN_FACE_PX, round(side * _CONFIRM_MIN_RATIO))
    largest = round(side * _CONFIRM_MAX_RATIO)
    if min(crop.shape) < smallest or largest < smallest:
        return None
    # Searched in a copy where the smallest face sought is _CONFIRM_SMALLEST_PX wide (see there).
    scale = min(1.0, _CONFIRM_SMALLEST_PX / smallest)
    # The same scale step and neighbours as the whole-picture search, so its levels mean the same.
    boxes, _levels, weights = face_cascade().detectMultiScale3(
        _shrink(crop, scale),
        scaleFactor=1.1,
        minNeighbors=4,
        minSize=(round(smallest * scale),) * 2,
        maxSize=(round(largest * scale),) * 2,
        outputRejectLevels=True,
    )
    found = [
        _Face(
            x0 + round(bx / scale), y0 + round(by / scale), round(bw / scale), float(weight), confirmed=True
        )
        for (bx, by, bw, _bh), weight in zip(boxes, np.ravel(weights), strict=True)
    ]
    return max(
        (
            face
            for face in found
            if face.confidence >= t.weak_face_confidence
            and _confirmed((face.x, face.y, face.side, face.side), [box])
        ),
        key=lambda f: f.confidence,
        default=None,
    )


def _search_whole_picture(
    gray: NDArray[np.uint8],
    model_faces: Sequence[tuple[int, int, int, int]],
    vouching: Sequence[tuple[int, int, int, int]] | None,
    t: ValidationThresholds,
) -> list[_Face]:
    import numpy as np

    min_side = max(_HAAR_MIN_FACE_PX, round(min(gray.shape) * t.face_search_min_fraction))
    # No histogram equalisation: on a flat background it stretches noise and hid real faces.
    # The thresholds are the cascade's levels at exactly this scale and step: on 182 variants of
    # scikit-image's photos a 384–400 px copy or a scaleFactor of 1.15–1.2 changed 20–25 verdicts.
    boxes, _levels, weights = face_cascade().detectMultiScale3(
        gray, scaleFactor=1.1, minNeighbors=4, minSize=(min_side, min_side), outputRejectLevels=True
    )

    def clear(box: tuple[int, int, int, int], confidence: float) -> bool:
        if vouching is not None and not _confirmed(box, vouching):
            return confidence >= t.unsupported_face_confidence
        return confidence >= t.face_confidence or _confirmed(box, model_faces)

    found = [
        ((int(x), int(y), int(w), int(h)), float(weight))
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=True)
    ]
    return _one_box_per_face(
        [
            _Face(*box[:3], confidence, _confirmed(box, model_faces))
            for box, confidence in found
            if confidence >= t.weak_face_confidence and clear(box, confidence)
        ]
    )


def _one_box_per_face(faces: Sequence[_Face]) -> list[_Face]:
    """The cascade often adds a second, larger box around the same head: keep the most certain one."""
    kept: list[_Face] = []
    for face in sorted(faces, key=lambda f: f.confidence, reverse=True):
        if not any(_same_face(face, other) for other in kept):
            kept.append(face)
    return sorted(kept, key=lambda f: f.side, reverse=True)


def _confirmed(box: tuple[int, int, int, int], model_faces: Sequence[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    return any(mx <= cx <= mx + mw and my <= cy <= my + mh for mx, my, mw, mh in model_faces)


def _same_face(a: _Face, b: _Face) -> bool:
    ax, ay = a.x + a.side / 2, a.y + a.side / 2
    bx, by = b.x + b.side / 2, b.y + b.side / 2
    return (b.x <= ax <= b.x + b.side and b.y <= ay <= b.y + b.side) or (
        a.x <= bx <= a.x + a.side and a.y <= by <= a.y + a.side
    )


def _crop_face(gray_full: NDArray[np.uint8], face: _Face, factor: float) -> NDArray[np.uint8]:
    import cv2
    import numpy as np

    x, y, side = round(face.x * factor), round(face.y * factor), max(1, round(face.side * factor))
    crop = gray_full[y : y + side, x : x + side]
    interpolation = cv2.INTER_AREA if side > _FACE_CROP_SIDE else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (_FACE_CROP_SIDE, _FACE_CROP_SIDE), interpolation=interpolation)
    return np.asarray(resized, dtype=np.uint8)


def resize_short_side(image: NDArray[np.uint8], short: int) -> NDArray[np.uint8]:
    return _shrink(image, short / min(image.shape[:2]))


def _shrink(image: NDArray[np.uint8], scale: float) -> NDArray[np.uint8]:
    """The image scaled down by `scale`; unchanged when that would not make it smaller."""
    import cv2
    import numpy as np

    if scale >= 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
