"""Benchmark: preparing long recordings for transcription (probe, normalize + silences, cut).

Makes a 10-minute and a 60-minute speech-like MP3 (44.1 kHz stereo, 128 kbit/s: tone bursts
with a syllable-rate tremolo over faint noise, a 0.8 s pause every 6.3 s) with ffmpeg's lavfi
sources, then for each file measures, in fresh child processes so the peaks do not mix:

- baseline: one plain ``ffmpeg -i in -ac 1 -ar 16000 -c:a libopus -b:a 24k out.ogg`` transcode
  (same Opus settings as the pipeline: voip, complexity 5);
- pipeline: ``prepare_audio`` (probe, the one-pass normalize + silencedetect, the chunk cuts).

It prints wall seconds, times faster than real time, the pipeline/baseline ratio, the peak RSS
of the Python process and of its ffmpeg children (``getrusage``), and the Python heap peak
(``tracemalloc``). The pipeline's Python memory must not grow from 10 to 60 minutes.

    .venv/bin/python bench/chunk_audio.py [--minutes 10 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from aisha.transcription.audio import AudioConfig, find_ffmpeg, prepare_audio


def make_speechlike(path: Path, minutes: int) -> float:
    seconds = minutes * 60
    graph = (
        f"sine=f=220:r=44100:d={seconds},tremolo=f=4:d=0.7,"
        "volume='if(lt(mod(t,6.3),5.5),1,0)':eval=frame[voice];"
        f"anoisesrc=r=44100:a=0.002:d={seconds}[noise];"
        "[voice][noise]amix=inputs=2:normalize=0[out]"
    )
    started = time.perf_counter()
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-filter_complex", graph,
         "-map", "[out]", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k", str(path)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def child_baseline(src: Path, work: Path) -> dict[str, float]:
    started = time.perf_counter()
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(src),
         "-ac", "1", "-ar", "16000", "-c:a", "libopus", "-application", "voip", "-compression_level", "5",
         "-b:a", "24000", str(work / "plain.ogg")],
        check=True,
    )  # fmt: skip
    return {"seconds": time.perf_counter() - started}


def child_pipeline(src: Path, work: Path) -> dict[str, float]:
    tracemalloc.start()
    started = time.perf_counter()
    prepared = asyncio.run(prepare_audio(src, work, config=AudioConfig()))
    elapsed = time.perf_counter() - started
    heap_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "seconds": elapsed,
        "duration": prepared.duration,
        "chunks": len(prepared.chunks),
        "silences": len(prepared.normalized.silences),
        "hard_cuts": sum(chunk.plan.hard_cut for chunk in prepared.chunks),
        "heap_peak_kb": heap_peak / 1024,
        "chunk_mb": max(chunk.path.stat().st_size for chunk in prepared.chunks) / 1e6,
    }


def run_child(kind: str, src: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as work:
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(src), work],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def child_main(kind: str, src: Path, work: Path) -> None:
    result = child_baseline(src, work) if kind == "baseline" else child_pipeline(src, work)
    # ru_maxrss is in KiB on Linux. RUSAGE_CHILDREN: the largest ffmpeg this process waited for.
    result["python_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["ffmpeg_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--keep", type=Path, help="keep the generated inputs in this directory")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, src, work = args.child
        child_main(kind, Path(src), Path(work))
        return

    print(f"ffmpeg: {find_ffmpeg()}")
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for minutes in args.minutes:
            src = folder / f"speechlike-{minutes}min.mp3"
            made = make_speechlike(src, minutes)
            print(f"made {src.name}: {src.stat().st_size / 1e6:.1f} MB in {made:.1f} s")
            base = run_child("baseline", src)
            pipe = run_child("pipeline", src)
            rows.append((minutes, base, pipe))

    audio_s = "audio"
    print()
    print(
        f"{audio_s:>6} | {'plain ffmpeg':>18} | {'prepare_audio':>18} | {'ratio':>5} | chunks (hard) | "
        f"{'py RSS MB':>13} | {'py heap KB':>10} | {'ffmpeg RSS MB':>13}"
    )
    for minutes, base, pipe in rows:
        seconds = minutes * 60
        print(
            f"{minutes:>4} m | {base['seconds']:6.1f} s {seconds / base['seconds']:6.0f}x | "
            f"{pipe['seconds']:6.1f} s {seconds / pipe['seconds']:6.0f}x | "
            f"{pipe['seconds'] / base['seconds']:5.2f} | {int(pipe['chunks']):>6} ({int(pipe['hard_cuts'])})   | "
            f"{base['python_rss_mb']:5.1f} / {pipe['python_rss_mb']:5.1f} | {pipe['heap_peak_kb']:10.0f} | "
            f"{base['ffmpeg_rss_mb']:5.1f} / {pipe['ffmpeg_rss_mb']:5.1f}"
        )
    print("(RSS columns: baseline / pipeline; heap: tracemalloc peak of the pipeline run)")
    if len(rows) >= 2:
        (m0, _, p0), (m1, _, p1) = rows[0], rows[-1]
        print(
            f"{m1} vs {m0} minutes: pipeline time x{p1['seconds'] / p0['seconds']:.1f}, "
            f"Python RSS x{p1['python_rss_mb'] / p0['python_rss_mb']:.2f}, "
            f"Python heap x{p1['heap_peak_kb'] / p0['heap_peak_kb']:.2f}, "
            f"ffmpeg RSS x{p1['ffmpeg_rss_mb'] / p0['ffmpeg_rss_mb']:.2f}; "
            f"largest chunk {max(p0['chunk_mb'], p1['chunk_mb']):.1f} MB"
        )


if __name__ == "__main__":
    main()
