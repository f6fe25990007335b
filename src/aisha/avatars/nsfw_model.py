"""The NSFW scan of a photo: the detector's protocol, NudeNet behind it, and the scan itself.

NudeNet 3's ONNX detector is run on the same input and gives the same boxes as
`nudenet.NudeDetector.detect`, without its per-call costs: the library converts the picture's
colours twice and loops over the model's 2,100 candidate rows in Python (longer than the colour
work and a large share of the inference itself); here the rows are filtered with numpy.

onnxruntime and nudenet are imported when the model is first needed, OpenCV and numpy when pixels
are, so a process that never checks a photo loads none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aisha.avatars.lazy import Lazy

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_INPUT_SIDE = 320  # the "320n" model that ships inside the wheel
_MIN_SCORE = 0.2  # NudeNet's own: rows below it never reach non-maximum suppression
_NMS_SCORE = 0.25
_NMS_IOU = 0.45


@dataclass(frozen=True, slots=True)
class Detection:
    """A labelled region found by an NsfwDetector, in the pixel coordinates of the array it was given."""

    label: str
    score: float
    box: tuple[int, int, int, int]  # x, y, width, height


class NudeNetModel:
    """One onnxruntime session for the process; `detect` is thread-safe (InferenceSession.run is)."""

    def __init__(self) -> None:
        import nudenet.nudenet as library  # type: ignore[import-untyped]  # heavy: onnxruntime
        import onnxruntime  # type: ignore[import-untyped]

        options = onnxruntime.SessionOptions()
        # One thread per call, never spinning: photos are checked in parallel by the validator's
        # pool, and a 320 px model split over the cores spent more CPU (and, on a busy machine,
        # more time) synchronising than it saved. The outputs are the same either way.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = onnxruntime.InferenceSession(
            library.__file__.removesuffix("nudenet.py") + "320n.onnx",
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._input_name: str = self._session.get_inputs()[0].name
        self._labels: list[str] = list(vars(library)["__labels"])

    def detect(self, rgb: NDArray[np.uint8], min_score: float = _NMS_SCORE) -> list[Detection]:
        """Labelled regions of an RGB image (H×W×3, uint8) scoring at least `min_score`.

        The library's own cut-off by default. A lower one only adds fainter regions: non-maximum
        suppression drops a box only for a higher-scoring one, so the boxes scoring above the
        library's cut-off stay exactly the library's."""
        import cv2

        height, width = rgb.shape[:2]
        side = max(height, width)
        # As NudeDetector: padded square (bottom and right), resized to 320 and scaled to 0–1, in
        # the channel order it ends up feeding (it swaps colours twice before swapRB).
        padded = cv2.copyMakeBorder(rgb, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        blob = cv2.dnn.blobFromImage(
            padded, 1 / 255.0, (_INPUT_SIDE, _INPUT_SIDE), (0, 0, 0), swapRB=True, crop=False
        )
        outputs = self._session.run(None, {self._input_name: blob})
        return self._boxes(outputs[0], width, height, side, min_score)

    def _boxes(
        self, output: NDArray[np.float32], width: int, height: int, side: int, min_score: float
    ) -> list[Detection]:
        import cv2
        import numpy as np

        rows = np.transpose(np.squeeze(output))  # 2100 candidates × (cx, cy, w, h, 18 class scores)
        scores = rows[:, 4:]
        best = scores.max(axis=1)
        keep = best >= min(_MIN_SCORE, min_score)
        rows, scores, best = rows[keep], scores[keep], best[keep]
        classes = scores.argmax(axis=1)
        # The library's arithmetic, in float32 like its per-row numpy scalars.
        w, h = rows[:, 2], rows[:, 3]
        x = (rows[:, 0] - w / 2) * side / _INPUT_SIDE
        y = (rows[:, 1] - h / 2) * side / _INPUT_SIDE
        w = w * side / _INPUT_SIDE
        h = h * side / _INPUT_SIDE
        x = np.clip(x, 0, width)
        y = np.clip(y, 0, height)
        w = np.minimum(w, width - x)
        h = np.minimum(h, height - y)
        boxes = np.stack([x, y, w, h], axis=1).astype(np.float64).tolist()
        kept = cv2.dnn.NMSBoxes(boxes, best.astype(np.float64).tolist(), min_score, _NMS_IOU)
        return [
            Detection(
                label=self._labels[int(classes[i])],
                score=float(best[i]),
                box=(int(x[i]), int(y[i]), int(w[i]), int(h[i])),
            )
            for i in np.ravel(kept)
        ]


# NudeNet reports regions down to this score (its own cut-off is 0.25): faint face boxes still tell
# where a face may be (see ValidationThresholds.face_label_min_score and face_support_min_score).
NUDENET_MIN_SCORE = 0.05
# NudeNet pads the picture to a square and resizes it to 320 px. It is given a copy whose long side
# is at least this: on bench/photo_verdicts.py a copy down to 320 px missed a group photo's second
# face, while from 400 px on no verdict was lost (one too-small face more was refused as such).
_NSFW_COPY_MIN_SIDE = 400


class NsfwDetector(Protocol):
    name: str
    boxes_faint_faces: bool  # reports face boxes down to ValidationThresholds.face_support_min_score

    def detect(self, rgb: NDArray[np.uint8]) -> Sequence[Detection]:
        """Labelled regions of an RGB image (H×W×3, uint8). Thread-safe."""
        ...

    def preload(self) -> None:
        """Load the model now (at startup) rather than on the first photo."""
        ...


def _load_nudenet() -> NudeNetModel:
    return NudeNetModel()  # the 320n ONNX model ships inside the wheel


_NUDENET: Lazy[NudeNetModel] = Lazy(_load_nudenet)


class NudeNetDetector:
    """NudeNet 3 (YOLO-style ONNX detector): exposed/covered body parts and FACE_FEMALE/FACE_MALE."""

    name = "nudenet"
    boxes_faint_faces = True

    def detect(self, rgb: NDArray[np.uint8]) -> Sequence[Detection]:
        return _NUDENET.get().detect(rgb, min_score=NUDENET_MIN_SCORE)

    def preload(self) -> None:
        _NUDENET.get()


NUDENET = NudeNetDetector()


@dataclass(frozen=True, slots=True)
class NsfwScan:
    detector: str
    detections: Sequence[Detection]  # in the pixels of the copy the model was given
    scale: int  # the picture's pixels per pixel of that copy


def scan_nsfw(rgb: NDArray[np.uint8], nsfw: NsfwDetector) -> NsfwScan:
    """What the NSFW model sees in the picture (thread-safe, and the dearest step of a check).

    The model is given a smaller copy, each pixel the mean of a whole block of the picture's:
    OpenCV averages whole blocks in 0.1 ms, where a copy at any other scale took 2 ms."""
    import cv2
    import numpy as np

    height, width = rgb.shape[:2]
    scale = max(1, max(height, width) // _NSFW_COPY_MIN_SIDE)
    if scale > 1:  # whole blocks only: at most scale - 1 pixels are left off the right and bottom
        height, width = height - height % scale, width - width % scale
        size = (width // scale, height // scale)
        rgb = np.asarray(cv2.resize(rgb[:height, :width], size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return NsfwScan(nsfw.name, nsfw.detect(rgb), scale)


def nsfw_detections(
    scan: NsfwScan | None, to_measure: float, metrics: dict[str, Any]
) -> Sequence[Detection] | None:
    """The scan's regions in the measuring copy's pixels (`to_measure` of the picture's each);
    None when the check is off."""
    if scan is None:
        metrics["nsfw"] = "skipped"
        return None
    detections = _rescale(scan.detections, scan.scale * to_measure)
    metrics["nsfw_detector"] = scan.detector
    best: dict[str, float] = {}
    for d in detections:
        best[d.label] = max(best.get(d.label, 0.0), round(d.score, 3))
    metrics["detections"] = best
    return detections


def _rescale(detections: Sequence[Detection], factor: float) -> list[Detection]:
    return [
        Detection(
            d.label,
            d.score,
            (
                round(d.box[0] * factor),
                round(d.box[1] * factor),
                round(d.box[2] * factor),
                round(d.box[3] * factor),
            ),
        )
        for d in detections
    ]
