"""bench/transcript_quality.py's scoring: words lost at a boundary, and those of them the whole
pass heard (the ones the cuts and the merge lost, not the recognizer)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "transcript_quality.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transcript_quality_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def recording(bench: ModuleType, text: str) -> object:
    words = bench.normalize(text)
    return bench.Recording(Path("unused.wav"), words, [float(i) for i in range(len(words))], len(words))


SAID = "we are met on a great battle-field of that war we have come to dedicate a portion of that field"


def test_a_word_lost_only_by_the_pipeline_counts_as_heard_by_the_whole_pass(bench: ModuleType) -> None:
    said = recording(bench, SAID)
    whole = "we are met on a great battle field of that war we have come to dedicate a portion of that field"
    pipeline = "we are met on a great battle field of that war we have come to a portion of that field"
    score = bench.score(said, pipeline, [14.0], bench.heard_words(said, whole))
    assert score.lost == [1]  # "dedicate", said at 15 s
    assert score.lost_heard == [1]


def test_a_word_both_passes_lost_is_not_counted_as_heard(bench: ModuleType) -> None:
    # tiny.en writes "battlefield" where the text says "battle-field": both passes "lose" a word.
    said = recording(bench, SAID)
    heard = "we are met on a great battlefield of that war we have come to dedicate a portion of that field"
    score = bench.score(said, heard, [7.0], bench.heard_words(said, heard))
    assert score.lost == [1]
    assert score.lost_heard == [0]


def test_words_lost_far_from_every_boundary_are_not_counted(bench: ModuleType) -> None:
    said = recording(bench, SAID)
    whole = SAID.replace("-", " ")
    pipeline = whole.replace("portion of that field", "portion")
    score = bench.score(said, pipeline, [2.0], bench.heard_words(said, whole))
    assert score.lost == [0]
    assert score.lost_heard == [0]
