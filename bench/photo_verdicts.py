"""Calibration: photos whose right verdict is known by construction, and how many the validator gets wrong.

    .venv/bin/python bench/photo_verdicts.py [--only accepted,no_face,...] [--wrong-only]

Every picture is composed in memory from scikit-image's bundled photos (nothing is downloaded):
the astronaut (Eileen Collins, one frontal face, about 0.19 of the photo's side) is pasted at
chosen scales, positions, lighting, small tilts and mirrorings onto busy or plain backgrounds
(coffee, gravel, brick, grass, coins, rocket, moon, the cat...). The size of the paste fixes the
face's share of the picture, so the expected verdict follows from the rules, not from a detector:

  accepted        one face of 11–19 % of the short side, normally lit and sharp
  several_faces   two astronauts, the second at least 0.7 the size of the first
  accepted        a main face with a far smaller second one (under 0.35 of its size)
  face_too_small  one face of 4–7 % of the short side (the rule is 8 %)
  no_face         backgrounds alone, parts of the astronaut without her head, the cat, her face
                  lying on its side or upside down (no usable frontal face)
  blurry          a portrait blurred at the measuring scale
  too_dark/bright a portrait under- or over-exposed as a whole

Prints one line per case, then the wrong ones grouped, and as the last line one JSON object:
{"cases": …, "wrong": …, "wrong_by_expected": {…}, "seconds": …}.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance, ImageFilter

FACE_SHARE = 0.19  # the astronaut's face side / the astronaut photo's side (NudeNet 98 px, Haar 95 px of 512)
CANVASES = [(1600, 1200), (2000, 1500), (1200, 1600), (1800, 1200), (3200, 2400)]
BACKGROUNDS = ["coffee", "gravel", "brick", "grass", "coins", "rocket", "moon", "chelsea", "cell", "clock"]
# Sharp, normally exposed photos without a human face: a picture of them alone is no_face (the moon,
# the cells and the motion-blurred clock are soft, hubble is too dark and the cameraman has a face).
FACELESS = ["coffee", "gravel", "brick", "grass", "coins", "rocket", "chelsea"]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    expected: str  # a RejectReason value, or "accepted"
    make: Callable[[], Image.Image]


@functools.cache
def photo(name: str) -> Image.Image:
    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")


def astronaut() -> Image.Image:
    return photo("astronaut")


def backdrop(name: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """`name` cropped at random to `size`'s aspect ratio and resized to it."""
    im = photo(name)
    aspect = size[0] / size[1]
    w = min(im.width, round(im.height * aspect))
    h = min(im.height, round(w / aspect))
    x = int(rng.integers(0, im.width - w + 1))
    y = int(rng.integers(0, im.height - h + 1))
    return im.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)


def finish(
    im: Image.Image, rng: np.random.Generator, *, light: float = 1.0, tilt: float = 0.0
) -> Image.Image:
    """Lighting, a small tilt (cropped so that no empty corner shows) and sensor grain."""
    if tilt:
        w, h = im.size
        rotated = im.rotate(tilt, Image.Resampling.BICUBIC)
        margin = int(np.ceil(np.sin(np.radians(abs(tilt))) * max(w, h) / 2)) + 2
        im = rotated.crop((margin, margin, w - margin, h - margin))
    if light != 1.0:
        im = ImageEnhance.Brightness(im).enhance(light)
    noisy = np.asarray(im, dtype=np.int16) + rng.normal(0, 3, (im.height, im.width, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def person(side: int, mirror: bool) -> Image.Image:
    im = astronaut().resize((side, side), Image.Resampling.LANCZOS)
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else im


def portrait(rng: np.random.Generator, share: tuple[float, float]) -> Image.Image:
    """One astronaut whose side is `share` of the canvas's short side, at a random place."""
    size = CANVASES[int(rng.integers(len(CANVASES)))]
    canvas = backdrop(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], size, rng)
    side = round(min(size) * float(rng.uniform(*share)))
    x = int(rng.integers(0, size[0] - side + 1))
    y = int(rng.integers(0, size[1] - side + 1))
    canvas.paste(person(side, bool(rng.integers(2))), (x, y))
    return canvas


def pair(rng: np.random.Generator, second: tuple[float, float]) -> Image.Image:
    """Two astronauts side by side on a landscape canvas, the second `second` times the first."""
    size = (2400, 1350) if rng.integers(2) else (2000, 1125)
    canvas = backdrop(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], size, rng)
    first = round(min(size) * float(rng.uniform(0.55, 0.8)))
    other = round(first * float(rng.uniform(*second)))
    left, right = (first, other) if rng.integers(2) else (other, first)
    x1 = int(rng.integers(0, size[0] - left - right + 1))
    x2 = int(rng.integers(x1 + left, size[0] - right + 1))
    for side, x in ((left, x1), (right, x2)):
        canvas.paste(person(side, bool(rng.integers(2))), (x, int(rng.integers(0, size[1] - side + 1))))
    return canvas


def mosaic(names: list[str], rng: np.random.Generator) -> Image.Image:
    """Four photos in a 2×2 grid, each at 0.6–1 of its own scale, the whole enlarged to a canvas:
    no part is blown up past its original sharpness at the 512 px measuring scale."""
    size = CANVASES[int(rng.integers(len(CANVASES)))]
    small = (round(size[0] * 512 / min(size)), round(size[1] * 512 / min(size)))
    cell = (small[0] // 2, small[1] // 2)
    grid = Image.new("RGB", (cell[0] * 2, cell[1] * 2))
    for k, name in enumerate(names):
        source = photo(name)
        low = max(0.6, cell[0] / source.width, cell[1] / source.height)  # above 1 for the cat, upright
        scale = float(rng.uniform(low, max(low, 1.0)))
        tile = source.resize(
            (round(source.width * scale), round(source.height * scale)), Image.Resampling.LANCZOS
        )
        x = int(rng.integers(0, tile.width - cell[0] + 1))
        y = int(rng.integers(0, tile.height - cell[1] + 1))
        grid.paste(tile.crop((x, y, x + cell[0], y + cell[1])), ((k % 2) * cell[0], (k // 2) * cell[1]))
    return grid.resize(size, Image.Resampling.BICUBIC)


def headless(rng: np.random.Generator) -> Image.Image:
    """Her suit, arms and the flag without her head (the face ends above row 190 of 512)."""
    size = CANVASES[int(rng.integers(len(CANVASES)))]
    canvas = backdrop(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], size, rng)
    body = astronaut().crop((0, 230, 512, 512))
    scale = min(size) / body.height * float(rng.uniform(0.6, 1.0))
    body = body.resize(
        (min(size[0], round(body.width * scale)), round(body.height * scale)), Image.Resampling.LANCZOS
    )
    canvas.paste(
        body,
        (int(rng.integers(0, size[0] - body.width + 1)), int(rng.integers(0, size[1] - body.height + 1))),
    )
    return canvas


def cases() -> Iterator[Case]:
    def case(
        name: str, expected: str, seed: int, build: Callable[[np.random.Generator], Image.Image]
    ) -> Case:
        return Case(name, expected, lambda: build(np.random.default_rng(seed)))

    def lit(
        share: tuple[float, float], light: tuple[float, float], tilt: float = 8
    ) -> Callable[[np.random.Generator], Image.Image]:
        return lambda rng: finish(
            portrait(rng, share), rng, light=float(rng.uniform(*light)), tilt=float(rng.uniform(-tilt, tilt))
        )

    for i in range(40):
        yield case(f"portrait_{i:02d}", "accepted", 100 + i, lit((0.6, 1.0), (0.85, 1.15)))
    for i in range(20):
        yield case(
            f"two_people_{i:02d}", "several_faces", 200 + i, lambda rng: finish(pair(rng, (0.7, 1.0)), rng)
        )
    for i in range(8):
        yield case(
            f"main_and_small_face_{i}", "accepted", 300 + i, lambda rng: finish(pair(rng, (0.2, 0.35)), rng)
        )
    for i in range(14):
        yield case(f"face_far_{i:02d}", "face_too_small", 400 + i, lit((0.32, 0.37), (0.9, 1.1), tilt=4))
    for i in range(6):
        yield case(f"face_tiny_{i}", "face_too_small", 450 + i, lit((0.22, 0.3), (0.9, 1.1), tilt=4))
    for i, name in enumerate(FACELESS * 3):

        def scene(rng: np.random.Generator, name: str = name) -> Image.Image:
            return finish(
                mosaic([name] * 4, rng),
                rng,
                light=float(rng.uniform(0.9, 1.15)),
                tilt=float(rng.uniform(-8, 8)),
            )

        yield case(f"no_person_{name}_{i // len(FACELESS)}", "no_face", 500 + i, scene)
    for i in range(10):

        def mixed(rng: np.random.Generator) -> Image.Image:
            names = [FACELESS[int(k)] for k in rng.choice(len(FACELESS), 4, replace=False)]
            return finish(mosaic(names, rng), rng)

        yield case(f"no_person_mosaic_{i}", "no_face", 550 + i, mixed)
    for i in range(8):
        yield case(f"headless_{i}", "no_face", 600 + i, lambda rng: finish(headless(rng), rng))
    for i, turn in enumerate(
        [Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_180] * 2
    ):

        def turned(rng: np.random.Generator, turn: Image.Transpose = turn) -> Image.Image:
            return finish(portrait(rng, (0.7, 0.95)).transpose(turn), rng)

        yield case(f"face_turned_{turn.name.lower()}_{i // 3}", "no_face", 700 + i, turned)
    for i in range(10):

        def blurred(rng: np.random.Generator) -> Image.Image:
            im = portrait(rng, (0.6, 1.0))
            radius = float(rng.uniform(3, 5)) * min(im.size) / 512  # 3–5 px at the measuring scale
            return finish(im.filter(ImageFilter.GaussianBlur(radius)), rng)

        yield case(f"blurred_{i}", "blurry", 800 + i, blurred)
    for i in range(8):
        yield case(f"dark_{i}", "too_dark", 900 + i, lit((0.6, 1.0), (0.12, 0.25), tilt=0))
    for i in range(8):
        yield case(f"bright_{i}", "too_bright", 950 + i, lit((0.6, 1.0), (2.8, 3.5), tilt=0))


def jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated expected verdicts to run")
    parser.add_argument("--wrong-only", action="store_true", help="print only the wrong verdicts")
    args = parser.parse_args()
    from aisha.avatars.validation import PhotoValidator

    validator = PhotoValidator()
    validator.preload()
    wanted = set(args.only.split(",")) if args.only else None
    results: list[tuple[Case, str]] = []
    seconds = 0.0
    for c in cases():
        if wanted and c.expected not in wanted:
            continue
        data = jpeg(c.make())
        started = time.perf_counter()
        verdict = validator.validate(data)
        seconds += time.perf_counter() - started
        got = verdict.reason.value if verdict.reason else "accepted"
        results.append((c, got))
        if not args.wrong_only or got != c.expected:
            faces = [f["box"][2] for f in verdict.metrics.get("faces", [])]
            mark = "ok   " if got == c.expected else "WRONG"
            print(
                f"{mark} {c.name:32s} expected {c.expected:15s} got {got:15s} face sides {faces}", flush=True
            )
    wrong = [(c, got) for c, got in results if got != c.expected]
    print(f"\n{len(wrong)} wrong of {len(results)}: " + ", ".join(f"{c.name}→{got}" for c, got in wrong))
    print(
        json.dumps(
            {
                "cases": len(results),
                "wrong": len(wrong),
                "wrong_by_expected": dict(sorted(Counter(c.expected for c, _ in wrong).items())),
                "seconds": round(seconds, 1),  # validating only, not making the pictures
            }
        )
    )


if __name__ == "__main__":
    main()
