"""Our NudeNet runner feeds the model what `nudenet.NudeDetector.detect` feeds it and reads the
same boxes back (it only skips the library's colour round trip and Python loop): checked against
the library itself on real photos, whole and cut to other shapes, so a NudeNet release that
changed its pre- or post-processing would show here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from numpy.typing import NDArray

from aisha.avatars.nsfw_model import NudeNetModel


def _shapes(rgb: NDArray[np.uint8]) -> list[NDArray[np.uint8]]:
    h, w = rgb.shape[:2]
    return [rgb, np.ascontiguousarray(rgb[: h // 2]), np.ascontiguousarray(rgb[:, : w // 3])]


@pytest.fixture(scope="module")
def models() -> tuple[NudeNetModel, object]:
    from nudenet import NudeDetector  # type: ignore[import-untyped]

    return NudeNetModel(), NudeDetector()


def _library_detections(library: object, rgb: NDArray[np.uint8]) -> list[tuple[str, float, tuple[int, ...]]]:
    """What NudeNet's own `detect` finds (it reads BGR), in our Detection's terms."""
    theirs = library.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # type: ignore[attr-defined]
    return [(d["class"], d["score"], tuple(d["box"])) for d in theirs]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_the_same_detections_as_the_library(models: tuple[NudeNetModel, object], name: str) -> None:
    ours, library = models
    for rgb in _shapes(getattr(skimage.data, name)()):
        expected = _library_detections(library, rgb)
        assert [(d.label, d.score, d.box) for d in ours.detect(rgb)] == expected


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_a_lower_cut_off_only_adds_fainter_regions(models: tuple[NudeNetModel, object], name: str) -> None:
    ours, library = models
    for rgb in _shapes(getattr(skimage.data, name)()):
        expected = _library_detections(library, rgb)
        found = ours.detect(rgb, min_score=0.1)
        assert [(d.label, d.score, d.box) for d in found if d.score > 0.25] == expected
        assert all(d.score > 0.1 for d in found)


def test_the_astronaut_face_is_found(models: tuple[NudeNetModel, object]) -> None:
    found = {d.label for d in models[0].detect(skimage.data.astronaut()) if d.score >= 0.25}
    assert found & {"FACE_FEMALE", "FACE_MALE"}
