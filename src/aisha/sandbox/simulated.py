"""What the sandbox's fakes answer instead of real models: marked pictures and transcripts.

Everything here says plainly that it is simulated, so nobody takes sandbox output for the real thing.
"""

from __future__ import annotations

import io
import random
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from aisha.i18n import Translator
from aisha.sandbox.openai import (
    FakeTranscript,
    StructuredReply,
    TranscriptionRequest,
    TranscriptScript,
)

_PROMPT_CHARS = 120  # how much of the prompt is written on the picture
# Pillow's own default font (Aileron) has no Cyrillic: Russian prompts came out as boxes.
# Source Sans Pro covers Latin and Cyrillic (SIL OFL 1.1, licence beside it).
FONT_PATH = Path(__file__).parent / "fonts" / "SourceSansPro-Regular.otf"


def render_sandbox_image(prompt: str, width: int, height: int, seed: int) -> bytes:
    """A soft diagonal gradient with "SANDBOX" and the start of the prompt on it, as PNG."""
    rng = random.Random(seed)
    start = (rng.randrange(90, 200), rng.randrange(90, 200), rng.randrange(90, 200))
    end = (rng.randrange(150, 250), rng.randrange(150, 250), rng.randrange(150, 250))
    # A gradient from two tiny images scaled up: fast at any size.
    corners = Image.new("RGB", (2, 2))
    corners.putdata([start, _mix(start, end), _mix(start, end), end])
    image = corners.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    unit = max(12, min(width, height) // 12)
    draw.text((unit, unit), "SANDBOX", fill=(255, 255, 255), font=font(unit * 2))
    size = unit // 2 + 1
    characters_per_line = max(16, (width - 2 * unit) // round(size * 0.55))  # ~ the font's average width
    caption = textwrap.fill(prompt[:_PROMPT_CHARS], width=characters_per_line)
    draw.multiline_text((unit, unit * 4), caption, fill=(30, 30, 30), font=font(size))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """The font the pictures are written in, at ``size`` pixels (loaded once per size)."""
    return ImageFont.truetype(FONT_PATH, size)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int]) -> tuple[int, int, int]:
    return (a[0] + b[0]) // 2, (a[1] + b[1]) // 2, (a[2] + b[2]) // 2


def transcript_script(default_language: str) -> TranscriptScript:
    """Transcripts like "[sandbox] Simulated transcript of 0:07 of audio.", in the language the bot
    asked for, else in ``default_language`` (the sandbox user's)."""
    translator = Translator.load(default_language)

    def transcript(call: TranscriptionRequest) -> FakeTranscript:
        locale = translator.resolve_locale(call.language or default_language)
        if call.duration is None:
            text = translator.get(locale, "sandbox.transcript_no_length")
        else:
            minutes, seconds = divmod(round(call.duration), 60)
            text = translator.get(locale, "sandbox.transcript", duration=f"{minutes}:{seconds:02d}")
        return FakeTranscript(text, language=locale)

    return transcript


def _echo_prompt(body: dict[str, Any]) -> dict[str, Any]:
    """Prompt enhancement that keeps the user's words (the picture shows them)."""
    users = [m for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    return {"prompt": content if isinstance(content, str) else "", "source_language": "en"}


# By json_schema name; the quality check's default answer (no defects) needs nothing here.
STRUCTURED_REPLIES: dict[str, StructuredReply] = {
    "image_prompt": _echo_prompt,
    "photo_prompt": {"prompt": "me in a simulated scene, soft daylight (sandbox: no model saw the photo)"},
}
