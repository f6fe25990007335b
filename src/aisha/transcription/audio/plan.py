"""Where to cut a recording into chunks (pure): at silences near equal boundaries, else hard cuts
with an overlap."""

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
) -> list[ChunkPlan]:
    """Cut ``[0, duration]`` into chunks of at most ``max_chunk`` seconds.

    Boundaries aim at equal chunks (a 25-minute file with 10-minute chunks gives three of ~8.3,
    not 10 + 10 + 5), which balances the parallel requests. Each boundary goes to the middle of
    the longest silence (compared to 0.1 s, capped at 2 s) within ``window`` of its target (ties:
    the closest), never making a chunk longer than ``max_chunk``; with no silence there it is a
    hard cut at the target, and the next chunk starts ``overlap`` seconds earlier.
    """
    if duration <= 0:
        return []
    if duration <= max_chunk:
        return [ChunkPlan(0, 0.0, duration)]
    # Clamped so every chunk is at least a quarter of max_chunk and each step moves forward.
    window = min(window, max_chunk / 4)
    overlap = min(overlap, max_chunk / 4)
    ordered = sorted(silences, key=lambda s: s.start)
    plans: list[ChunkPlan] = []
    start, chunk_overlap, hard = 0.0, 0.0, False
    while duration - start > max_chunk:
        remaining = duration - start
        target = start + remaining / math.ceil(remaining / max_chunk)
        lo, hi = target - window, min(target + window, start + max_chunk)
        best: tuple[float, float, float] | None = None  # (-length, distance, cut)
        for silence in ordered:
            if silence.start >= hi:
                break
            a, b = max(silence.start, lo), min(silence.end, hi)
            if b <= a:
                continue
            # The middle of the silence, or the point of it nearest the middle inside the window.
            cut = min(max((silence.start + silence.end) / 2, a), b)
            # Longer pauses are likelier ends of sentences, but past 2 s (or within 0.1 s of each
            # other) they are as good, and the one nearer the target keeps chunks even.
            key = (-round(min(silence.duration, 2.0), 1), abs(cut - target), cut)
            if best is None or key < best:
                best = key
        if best is not None:
            cut = best[2]
            plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
            start, chunk_overlap, hard = cut, 0.0, False
        else:
            cut = target
            plans.append(ChunkPlan(len(plans), start, cut, chunk_overlap, hard))
            start, chunk_overlap, hard = cut - overlap, overlap, True
    plans.append(ChunkPlan(len(plans), start, duration, chunk_overlap, hard))
    return plans
