"""A transcript's preview in the list stays short whatever the language, so a page of five fits in
one Telegram message (4096 UTF-16 units)."""

from __future__ import annotations

from aisha.bot.presenters.transcription import PREVIEW_UNITS, preview
from aisha.sandbox import parse_html
from aisha.transcription.models import Transcript


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_words_are_previewed_as_before() -> None:
    transcript = Transcript(text="one two three four five six seven eight nine ten <b>")
    assert preview(transcript) == "one two three four five six seven eight …"


def test_speech_without_spaces_is_cut_too() -> None:
    for text in ("雪が降っている。" * 500, "😀" * 3000, "x" * 5000):
        shown, _ = parse_html(preview(Transcript(text=text)))
        assert _units(shown) <= PREVIEW_UNITS
        assert shown.endswith(" …")
