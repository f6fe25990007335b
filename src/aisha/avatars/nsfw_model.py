"""NudeNet 3's ONNX detector, run on the same input and giving the same boxes as
`nudenet.NudeDetector.detect`, without its per-call costs: the library converts the picture's
colours twice and loops over the model's 2,100 candidate rows in Python (longer than the colour
work and a large share of the inference itself); here the rows are filtered with numpy.

onnxruntime and nudenet are imported when the model is first needed (see `photo_checks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
