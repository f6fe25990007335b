"""Where to cut a recording into chunks (pure): at silences near equal boundaries, else hard cuts
with an overlap, placed in the short gaps between words where there are any."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aisha.transcription.audio.types import ChunkPlan, Silence


def plan_chunks(
    duration: float,
    silences: Sequence[Silence],
    *,
    max_chunk: float,
    window: float = 30.0,
    overlap: float = 2.0,
    gaps: Sequence[Silence] = (),
) -> list[ChunkPlan]:
    """Cut ``[0, duration]`` into chunks of at most ``max_chunk`` seconds.

    Boundaries aim at equal chunks (a 25-minute file with 10-minute chunks gives three of ~8.3,
    not 10 + 10 + 5), which balances the parallel requests. Each boundary goes to the middle of
    the longest silence (compared to 0.1 s, capped at 2 s) within ``window`` of its target (ties:
    the closest), never making a chunk longer than ``max_chunk``. With no silence there it is a
    hard cut, and the next chunk starts about ``overlap`` seconds earlier; both ends then go to
    the middle of the longest of ``gaps`` (pauses too short to be silences: between words, after
    a comma) near them, else to the target. A piece that starts or ends inside a word makes a
    recognizer mishear it, and sometimes everything after it up to its next window.
    """
    if duration <= 0:
        return []
    if duration <= max_chunk:
        return [ChunkPlan(0, 0.0, duration)]
    # Clamped so every chunk is at least a quarter of max_chunk and each step moves forward.
    window = min(window, max_chunk / 4)
    overlap = min(overlap, max_chunk / 8)
    gap_window = min(window, max_chunk / 8)
    ordered = sorted(silences, key=lambda s: s.start)
    short = sorted(gaps, key=lambda s: s.start)
    plans: list[ChunkPlan] = []
    start, chunk_overlap, hard = 0.0, 0.0, False
    while duration - start > max_chunk:
        remaining = duration - start
        pieces = math.ceil(remaining / max_chunk)
        target = start + remaining / pieces
        hi = min(target + window, start + max_chunk)
        cut = _middle_of_longest(ordered, target - window, hi, target)
        if cut is not None:
            plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
            start, chunk_overlap, hard = cut, 0.0, False
            continue
        # The pieces after this one must still cover the rest: none of them may start earlier.
        earliest = duration - (pieces - 1) * max_chunk
        cut, following = _hard_cut(short, target, earliest, gap_window, overlap, start + max_chunk)
        plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
        start, chunk_overlap, hard = cut - following, following, True
    plans.append(ChunkPlan(len(plans), start, duration, chunk_overlap, hard))
    return plans


def _hard_cut(
    gaps: Sequence[Silence], target: float, earliest: float, window: float, overlap: float, latest: float
) -> tuple[float, float]:
    """A cut with no silence near ``target``, and how far before it the next piece starts: both
    in the middle of the longest gap near them when there is one (the next piece with half to
    twice ``overlap``), else at the target, ``overlap`` back. Gaps that let the next piece start
    from ``earliest`` on come first: they need no extra piece."""
    hi = min(target + window, latest)
    cut = _middle_of_longest(gaps, max(target - window, earliest + overlap / 2), hi, target)
    if cut is None:  # rather one more piece than a cut inside a word
        cut = _middle_of_longest(gaps, target - window, hi, target)
    if cut is None:
        return target, overlap
    at = _middle_of_longest(gaps, max(cut - 2 * overlap, earliest), cut - overlap / 2, cut - overlap)
    if at is None:  # rather one more piece than one starting inside a word
        at = _middle_of_longest(gaps, cut - 2 * overlap, cut - overlap / 2, cut - overlap)
    return cut, overlap if at is None or at >= cut else cut - at


def _middle_of_longest(ordered: Sequence[Silence], lo: float, hi: float, target: float) -> float | None:
    """The middle of the longest silence within ``[lo, hi]`` (ties: the closest to ``target``),
    or the point of it nearest its middle inside the window; None when none reaches into it."""
    best: tuple[float, float, float] | None = None  # (-length, distance, cut)
    for silence in ordered:
        if silence.start >= hi:
            break
        a, b = max(silence.start, lo), min(silence.end, hi)
        if b <= a:
            continue
        cut = min(max((silence.start + silence.end) / 2, a), b)
        # Longer pauses are likelier ends of sentences, but past 2 s (or within 0.1 s of each
        # other) they are as good, and the one nearer the target keeps chunks even.
        key = (-round(min(silence.duration, 2.0), 1), abs(cut - target), cut)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]
