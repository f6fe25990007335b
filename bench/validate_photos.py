"""Validating 12-megapixel photos against a plain Pillow decode of the same files, in the same run.

    .venv/bin/python bench/validate_photos.py [--photos 20] [--rounds 2]

Writes N 4000×3000 JPEGs (the astronaut from scikit-image's wheel, placed, lit and grained
differently each time) to a temporary folder, then measures, each phase in a fresh subprocess so
that its peak RSS is its own:

  decode    Image.open(path).load() on every file: the floor any check has to pay
  validate  PhotoValidator.validate(bytes) one after another (models loaded beforehand)
  async     PhotoValidator.validate_async on all N at once (the bot receiving an album), with a
            ticker coroutine measuring how long the event loop was kept from running

The last line is one JSON object: {"validate_over_decode": …, "twenty_photos_s": …, …}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

SIZE = (4000, 3000)


def make_photos(folder: Path, count: int) -> list[Path]:
    import skimage.data

    rng = np.random.default_rng(7)
    person = Image.fromarray(skimage.data.astronaut())
    backdrop = Image.fromarray(skimage.data.coffee()).resize(SIZE, Image.Resampling.BICUBIC)
    paths = []
    for i in range(count):
        side = int(rng.integers(1500, 2600))
        canvas = backdrop.copy()
        x = int(rng.integers(0, SIZE[0] - side))
        y = int(rng.integers(0, SIZE[1] - side))
        canvas.paste(person.resize((side, side), Image.Resampling.BICUBIC), (x, y))
        canvas = ImageEnhance.Brightness(canvas).enhance(float(rng.uniform(0.8, 1.2)))
        # Sensor grain: without it the upscaled picture compresses to an unrealistically small file.
        pixels = np.asarray(canvas, dtype=np.int16) + rng.normal(0, 4, (SIZE[1], SIZE[0], 3)).astype(np.int16)
        path = folder / f"photo_{i:02d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    # VmHWM starts afresh at exec; ru_maxrss would carry over the parent's peak (the photo maker's).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def phase_decode(paths: list[Path]) -> dict[str, Any]:
    datas = [p.read_bytes() for p in paths]  # both phases start from bytes in memory, as the bot does
    import io

    rss_before = peak_rss_mb()
    times, peaks = [], []
    cpu_before, wall_before = cpu_s(), time.perf_counter()
    for data in datas:
        tracemalloc.start()
        started = time.perf_counter()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        times.append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return _summary(times, peaks, rss_before, cpu_s() - cpu_before, time.perf_counter() - wall_before)


def phase_validate(paths: list[Path]) -> dict[str, Any]:
    from aisha.avatars.validation import PhotoValidator

    datas = [p.read_bytes() for p in paths]
    validator = PhotoValidator()
    validator.preload()
    validator.validate(datas[0])  # warm-up: first-call allocations in OpenCV and onnxruntime
    rss_before = peak_rss_mb()
    times, peaks, reasons, accepted = [], [], [], []
    cpu_before, wall_before = cpu_s(), time.perf_counter()
    for data in datas:
        tracemalloc.start()
        started = time.perf_counter()
        verdict = validator.validate(data, accepted_hashes=accepted[:0])  # each photo judged on its own
        times.append(time.perf_counter() - started)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        reasons.append(str(verdict.reason) if verdict.reason else "accepted")
    result = _summary(times, peaks, rss_before, cpu_s() - cpu_before, time.perf_counter() - wall_before)
    result["verdicts"] = {r: reasons.count(r) for r in sorted(set(reasons))}
    return result


def phase_async(paths: list[Path]) -> dict[str, Any]:
    from aisha.avatars.validation import PhotoValidator

    datas = [p.read_bytes() for p in paths]
    validator = PhotoValidator()
    validator.preload()
    validator.validate(datas[0])

    async def run() -> dict[str, Any]:
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - before - 0.01)

        tick = asyncio.create_task(ticker())
        cpu_before, started = cpu_s(), time.perf_counter()
        verdicts = await asyncio.gather(*(validator.validate_async(d) for d in datas))
        wall = time.perf_counter() - started
        cores_busy = (cpu_s() - cpu_before) / wall
        done.set()
        await tick
        return {
            "wall_s": wall,
            "cores_busy": cores_busy,
            "per_photo_s": wall / len(datas),
            "loop_lag_max_ms": max(lags) * 1000,
            "loop_lag_p99_ms": float(np.percentile(lags, 99)) * 1000,
            "ticks": len(lags),
            "accepted": sum(v.accepted for v in verdicts),
            "peak_rss_mb": peak_rss_mb(),
        }

    return asyncio.run(run())


def _summary(
    times: list[float], peaks: list[int], rss_before: float, cpu: float, wall: float
) -> dict[str, Any]:
    return {
        "cores_busy": cpu / wall,
        "cpu_s": cpu / len(times),
        "mean_s": statistics.fmean(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "tracemalloc_peak_mb": max(peaks) / 2**20,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }


PHASES = {"decode": phase_decode, "validate": phase_validate, "async": phase_async}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=2, help="run every phase this many times, keep each one's fastest"
    )
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase, JSON out
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase:
        paths = sorted(args.folder.glob("photo_*.jpg"))
        print(json.dumps(PHASES[args.phase](paths)))
        return

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        paths = make_photos(folder, args.photos)
        sizes = [p.stat().st_size for p in paths]
        print(
            f"{len(paths)} photos {SIZE[0]}×{SIZE[1]} ({SIZE[0] * SIZE[1] / 1e6:.0f} MP), "
            f"JPEG {statistics.fmean(sizes) / 2**20:.1f} MiB on average, made in {time.perf_counter() - started:.1f} s"
        )
        # Phases alternate round by round and each keeps its fastest run: on a shared machine the
        # load others put on it comes and goes, and it should not land on one phase only.
        results: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for phase in PHASES:
                out = subprocess.run(
                    [sys.executable, __file__, "--phase", phase, "--folder", str(folder)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                key = "wall_s" if phase == "async" else "mean_s"
                if phase not in results or result[key] < results[phase][key]:
                    results[phase] = result

    dec, val, conc = results["decode"], results["validate"], results["async"]
    print()
    print(
        f"{'':34s}{'s/photo':>10s}{'CPU s':>8s}{'max s':>8s}{'tracemalloc MB':>16s}{'peak RSS MB':>13s}{'cores busy':>12s}"
    )
    print(
        f"{'plain Pillow decode (full size)':34s}{dec['mean_s']:10.3f}{dec['cpu_s']:8.3f}{dec['max_s']:8.3f}"
        f"{dec['tracemalloc_peak_mb']:16.1f}{dec['peak_rss_mb']:13.0f}{dec['cores_busy']:12.2f}"
    )
    print(
        f"{'validate (sequential)':34s}{val['mean_s']:10.3f}{val['cpu_s']:8.3f}{val['max_s']:8.3f}"
        f"{val['tracemalloc_peak_mb']:16.1f}{val['peak_rss_mb']:13.0f}{val['cores_busy']:12.2f}"
    )
    print(
        f"{'validate_async, all at once':34s}{conc['per_photo_s']:10.3f}{'':16s}{'':16s}"
        f"{conc['peak_rss_mb']:13.0f}{conc['cores_busy']:12.2f}"
    )
    print()
    print(
        f"validate / plain decode: {val['mean_s'] / dec['mean_s']:.2f}× the time, "
        f"{val['cpu_s'] / dec['cpu_s']:.2f}× the CPU seconds (steadier when others load the machine)"
    )
    print(f"verdicts: {val['verdicts']}")
    print(
        f"async: {len(paths)} photos in {conc['wall_s']:.2f} s wall "
        f"({val['mean_s'] * len(paths) / conc['wall_s']:.2f}× the sequential rate), "
        f"event loop lag max {conc['loop_lag_max_ms']:.1f} ms, p99 {conc['loop_lag_p99_ms']:.1f} ms"
    )
    print(f"machine: {os.cpu_count()} cores, load average before the run {load_before:.2f}")
    print("(tracemalloc sees numpy buffers but not Pillow's own pixel memory; peak RSS includes the models;")
    print(
        " cores busy = CPU seconds / wall seconds: above 1 means the work ran outside the GIL in parallel.)"
    )
    # The figures to compare run to run, as the last line.
    print(
        json.dumps(
            {
                "validate_over_decode": round(val["mean_s"] / dec["mean_s"], 2),
                "twenty_photos_s": round(conc["wall_s"], 2),  # all --photos (20 unless told) at once
                "validate_over_decode_cpu": round(val["cpu_s"] / dec["cpu_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
