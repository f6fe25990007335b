"""The sandbox's locally drawn pictures write the prompt legibly in Russian as well as English."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

from aisha.sandbox.simulated import font, render_sandbox_image

MISSING = "\U0010fffd"  # a private-use code point no font has: drawn as the missing-glyph box


def _glyph(character: str) -> bytes:
    image = Image.new("L", (64, 64))
    ImageDraw.Draw(image).text((8, 4), character, font=font(40), fill=255)
    return image.tobytes()


def test_the_font_draws_cyrillic_letters_as_themselves_not_as_boxes() -> None:
    box = _glyph(MISSING)
    letters = [_glyph(letter) for letter in "ЖЩЯёdЫ"]
    assert all(letter != box for letter in letters)
    assert len(set(letters)) == len(letters)  # every letter its own shape


def test_two_russian_prompts_give_two_different_pictures() -> None:
    # Same length, spaces in the same places: with a font lacking Cyrillic both are the same boxes.
    first = render_sandbox_image("Жираф на Марсе", 512, 640, seed=7)
    second = render_sandbox_image("Щенок из Крыма", 512, 640, seed=7)
    assert first != second
    assert Image.open(io.BytesIO(first)).size == (512, 640)
