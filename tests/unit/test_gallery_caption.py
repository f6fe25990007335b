"""The gallery card's caption stays within what Telegram accepts for any prompt a user may write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from aisha.bot.presenters.generation import gallery_caption
from aisha.generation.models import GalleryCard
from aisha.i18n import Translator
from aisha.sandbox import parse_html

CAPTION_LIMIT = 1024  # UTF-16 units, after entity parsing


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@pytest.mark.parametrize("prompt", ["😀" * 1000, "a" * 1000, "<b>&" * 250, "雪" * 1000, "ok 👍"])
@pytest.mark.parametrize("language", ["en", "ru"])
def test_the_caption_fits_for_any_prompt(prompt: str, language: str) -> None:
    card = GalleryCard(
        id=uuid.uuid4(),
        prompt=prompt,
        created_at=datetime(2026, 1, 2, tzinfo=UTC),
        cost=5,
        images=4,
        first_key="k",
        offset=999,
        total=1000,
    )
    caption = gallery_caption(Translator.load().bind(language), card)

    text, _ = parse_html(caption)  # as Telegram parses it: no refusal
    assert _utf16(text) <= CAPTION_LIMIT
    assert prompt[:2] in text
