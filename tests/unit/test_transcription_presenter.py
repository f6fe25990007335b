"""Every way a transcript can end has its words in every language (the presenter's keys)."""

from __future__ import annotations

import uuid

import pytest

from aisha.bot.presenters.transcription import status_text
from aisha.i18n import Translator
from aisha.transcription.audio import AudioErrorReason
from aisha.transcription.ports import (
    CantHold,
    CantPayLength,
    Done,
    Downloading,
    Failed,
    Status,
    TooLarge,
    TooLong,
    Working,
)

REASONS = [r.value for r in AudioErrorReason] + [
    "no_room",
    "download_failed",
    "ffmpeg_failed",
    "gave_up",
    "language_unsupported",
    "provider_failed",
    "undelivered",
]
STATUSES: list[Status] = [
    Downloading(),
    Working(75.0, 2, 8),
    Working(3700.0, 62, 0, done=2, total=7),
    Done(61.0),
    TooLarge(20 * 2**20, public_api=True),
    TooLarge(2000 * 2**20, public_api=False),
    TooLong(5 * 3600.0, 4 * 3600.0, exact=True),
    TooLong(8 * 3600.0, 4 * 3600.0, exact=False),
    CantHold(uuid.uuid4(), required=5, balance=2, shortfall=3),
    CantPayLength(uuid.uuid4(), 300.0, required=5, balance=2),
    *(Failed(reason) for reason in REASONS),
]


@pytest.mark.parametrize("locale", ["en", "ru"])
def test_every_status_has_its_words(locale: str) -> None:
    translator = Translator.load()
    # Only the locale itself: a key missing here would fall back to the other language.
    only = Translator({locale: {k: translator.raw(locale, k) for k in translator.keys(locale)}}, locale)
    t = only.bind(locale)
    for status in STATUSES:
        assert status_text(t, status).strip()


def test_our_failures_are_not_blamed_on_the_file() -> None:
    t = Translator.load().bind("en")
    internal = t("transcription.error.internal")
    assert status_text(t, Failed("ffmpeg_failed")) == internal
    assert status_text(t, Failed("gave_up")) == internal
    assert status_text(t, Working(3700.0, 62, 0, done=2, total=7)).endswith("part 2 of 7")
