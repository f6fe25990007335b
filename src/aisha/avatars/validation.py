"""Offline checks of a photo a user uploads to train a personal avatar.

A photo is refused with the first failing rule, in this order (cheap and unambiguous first; NSFW
last so that a photo without a person is told "no face" rather than accused of nudity):

1. too_large (before anything else), duplicate (same sha256, before decoding)
2. not_an_image / corrupt / too_many_pixels (decoding), too_small
3. duplicate (perceptual hash), too_dark / too_bright (the whole picture)
4. without a clear face: too_bright / too_dark (the likely cause), else blurry, else no_face
5. with one: blurry (the face), several_faces, face_too_small, too_dark / too_bright (the face)
6. nsfw

Faces: NudeNet's face boxes confirmed by OpenCV's Haar cascade in a crop around each, the
cascade's whole-picture search only when none is (see `photo_checks.find_faces`).
Models (OpenCV's Haar cascade, NudeNet's ONNX detector) ship inside their wheels, load lazily
once per process (the cascade once per thread: OpenCV doesn't promise a shared one is thread-safe)
and never download anything. OpenCV and numpy themselves are imported where pixels are handled,
so a process that never checks a photo never loads them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aisha.avatars.formats import hamming_distance
from aisha.avatars.lazy import Lazy
from aisha.avatars.nsfw_model import (
    NUDENET,
    Detection,
    NsfwDetector,
    NsfwScan,
    NudeNetDetector,
    nsfw_detections,
    scan_nsfw,
)
from aisha.avatars.photo_checks import (
    MEASURE_SHORT_SIDE,
    RejectReason,
    ValidationThresholds,
    face_cascade,
    face_metrics,
    face_reason,
    faceless_reason,
    find_faces,
    nsfw_reason,
    resize_short_side,
    whole_picture,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from aisha.avatars.imaging import DecodedImage

__all__ = [
    "NUDENET",
    "Detection",
    "NsfwDetector",
    "NudeNetDetector",
    "PhotoValidator",
    "PhotoVerdict",
    "RejectReason",
    "ValidationThresholds",
    "hamming_distance",
]


@dataclass(frozen=True, slots=True)
class PhotoVerdict:
    accepted: bool
    reason: RejectReason | None
    sha256: str
    perceptual_hash: str | None  # None when the bytes never decoded
    width: int | None  # after EXIF orientation, full resolution
    height: int | None
    size_bytes: int
    # What the checks measured (JSON-ready), stored as AvatarPhoto.metrics for support and tuning.
    metrics: dict[str, Any] = field(default_factory=dict)


# One photo's checks run mostly on one core (the NSFW model, the decoder), so more workers than
# cores only add memory (one decoded photo each), not speed.
_default_executor: Lazy[Executor] = Lazy(
    lambda: ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2), thread_name_prefix="photo-check")
)
# The NSFW model runs on a thread of its own while the check measures the picture, so that one photo
# is checked on two cores (onnxruntime releases the GIL). A pool of its own: a scan waits for
# nothing, so a validator waiting for its scan can never hold the thread the scan needs.
_scan_executor: Lazy[Executor] = Lazy(
    lambda: ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="nsfw-scan")
)


class PhotoValidator:
    """Checks one photo at a time. `validate` is CPU work for a worker thread; `validate_async` is
    the one to call from a coroutine.

    Threads suffice (measured in bench/validate_photos.py): Pillow's decoders, OpenCV and
    onnxruntime release the GIL, so a thread pool uses every core and leaves the event loop free.
    """

    def __init__(
        self,
        thresholds: ValidationThresholds | None = None,
        nsfw: NsfwDetector | None = NUDENET,
        *,
        executor: Executor | None = None,
    ) -> None:
        self.thresholds = thresholds or ValidationThresholds()
        # None switches the NSFW check off (reported in every verdict's metrics as "nsfw": "skipped").
        self.nsfw = nsfw
        # Shared by default so that every validator in the process together stays within the cores.
        self._executor = executor

    def preload(self) -> None:
        """Load the models now (call once at startup, in a worker thread)."""
        import aisha.avatars.imaging  # noqa: F401  # Pillow and its HEIF plugin

        face_cascade()
        if self.nsfw is not None:
            self.nsfw.preload()

    async def validate_async(
        self, data: bytes, *, accepted_hashes: Sequence[str] = (), accepted_sha256: Collection[str] = ()
    ) -> PhotoVerdict:
        loop = asyncio.get_running_loop()
        executor = self._executor or _default_executor.get()
        call = functools.partial(
            self.validate, data, accepted_hashes=accepted_hashes, accepted_sha256=accepted_sha256
        )
        return await loop.run_in_executor(executor, call)

    def validate(
        self, data: bytes, *, accepted_hashes: Sequence[str] = (), accepted_sha256: Collection[str] = ()
    ) -> PhotoVerdict:
        """`accepted_hashes`: perceptual hashes of the avatar's accepted photos; `accepted_sha256`
        (optional): their sha256, for refusing an exact resend without decoding it."""
        started = time.perf_counter()
        verdict = self._validate(data, accepted_hashes, accepted_sha256)
        verdict.metrics["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return verdict

    def _validate(
        self, data: bytes, accepted_hashes: Sequence[str], accepted_sha256: Collection[str]
    ) -> PhotoVerdict:
        t = self.thresholds
        sha = hashlib.sha256(data).hexdigest()
        metrics: dict[str, Any] = {}

        def verdict(
            reason: RejectReason | None,
            phash: str | None = None,
            width: int | None = None,
            height: int | None = None,
        ) -> PhotoVerdict:
            return PhotoVerdict(
                accepted=reason is None,
                reason=reason,
                sha256=sha,
                perceptual_hash=phash,
                width=width,
                height=height,
                size_bytes=len(data),
                metrics=metrics,
            )

        if len(data) > t.max_file_bytes:
            return verdict(RejectReason.TOO_LARGE)
        if sha in accepted_sha256:
            metrics["duplicate_distance"] = 0
            return verdict(RejectReason.DUPLICATE)
        from aisha.avatars.imaging import (  # Pillow: loaded by the first photo checked
            CorruptImageError,
            NotAnImageError,
            TooManyPixelsError,
            decode_image,
            perceptual_hash,
        )

        try:
            decoded = decode_image(
                data,
                max_pixels=t.max_pixels,
                max_side=t.analysis_max_side,
                min_short_side=MEASURE_SHORT_SIDE,
                formats=t.allowed_formats,
            )
        except TooManyPixelsError as exc:
            return verdict(RejectReason.TOO_MANY_PIXELS, width=exc.width, height=exc.height)
        except NotAnImageError:
            return verdict(RejectReason.NOT_AN_IMAGE)
        except CorruptImageError as exc:
            metrics["error"] = str(exc)[:200]
            return verdict(RejectReason.CORRUPT)

        metrics["format"] = decoded.format
        if min(decoded.width, decoded.height) < t.min_short_side:
            return verdict(RejectReason.TOO_SMALL, width=decoded.width, height=decoded.height)
        import cv2
        import numpy as np

        rgb: NDArray[np.uint8] = np.asarray(decoded.image)
        scan = None if self.nsfw is None else _scan_executor.get().submit(scan_nsfw, rgb, self.nsfw)
        try:
            gray_full = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
            phash = perceptual_hash(gray_full)
            reason = self._check(decoded, gray_full, phash, scan, accepted_hashes, metrics)
        finally:
            if scan is not None:
                scan.cancel()  # refused without it: a scan still queued (a busy pool) never runs
        return verdict(reason, phash, decoded.width, decoded.height)

    def _check(
        self,
        decoded: DecodedImage,
        gray_full: NDArray[np.uint8],
        phash: str,
        scan: Future[NsfwScan] | None,
        accepted_hashes: Sequence[str],
        metrics: dict[str, Any],
    ) -> RejectReason | None:
        t = self.thresholds
        if accepted_hashes:
            distance = min(hamming_distance(phash, known) for known in accepted_hashes)
            metrics["duplicate_distance"] = distance
            if distance <= t.duplicate_max_distance:
                return RejectReason.DUPLICATE
        gray = resize_short_side(gray_full, MEASURE_SHORT_SIDE)
        light = whole_picture(gray, t, metrics)
        if isinstance(light, RejectReason):
            return light
        to_measure = gray.shape[1] / gray_full.shape[1]
        detections = nsfw_detections(None if scan is None else scan.result(), to_measure, metrics)
        faces = find_faces(
            gray, detections, t, boxes_faint_faces=self.nsfw is not None and self.nsfw.boxes_faint_faces
        )
        scale_to_original = decoded.width / gray.shape[1]
        metrics["faces"] = face_metrics(faces, scale_to_original)
        if not faces:
            return faceless_reason(light, t)
        reason = face_reason(gray_full, gray, faces, scale_to_original, t, metrics)
        if reason is None and detections is not None:
            reason = nsfw_reason(detections, t)
        return reason
