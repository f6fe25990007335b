"""The avatar wizard's presentation: review albums within Telegram's 2-10, the status message."""

from __future__ import annotations

import pytest

from aisha.avatars.models import AvatarType, UploadStatus
from aisha.bot.presenters.avatars import REFUSED_SHOWN, REVIEW_CALLBACK, AvatarNotifier, album_sizes
from aisha.i18n import Translator
from aisha.messaging import Button


@pytest.mark.parametrize(
    ("count", "sizes"),
    [(1, [1]), (2, [2]), (10, [10]), (11, [6, 5]), (12, [6, 6]), (20, [10, 10]), (21, [7, 7, 7])],
)
def test_review_albums_hold_2_to_10_photos(count: int, sizes: list[int]) -> None:
    assert album_sizes(count) == sizes


def _status(accepted: int, refused: int = 0, *, collecting: bool = True) -> tuple[str, object]:
    notifier = AvatarNotifier(messenger=None, translator=Translator.load())  # type: ignore[arg-type]
    status = UploadStatus(
        name="<Me>",
        type=AvatarType.PORTRAIT,
        accepted=accepted,
        refused=[(n, "IMG_3.jpg" if n == 3 else None, "no_face") for n in range(refused, 0, -1)],
        refused_count=refused,
        collecting=collecting,
    )
    return notifier.upload_status(locale="en", status=status, min_photos=10, max_photos=20)


def test_the_review_button_comes_at_the_minimum_and_goes_with_the_draft() -> None:
    text, buttons = _status(9)
    assert (
        text
        == "📸 Photos for <b>&lt;Me&gt;</b>\nAccepted: 9 photos (you need 10–20).\nSend at least 1 more photo."
    )
    assert buttons is None
    text, buttons = _status(10)
    assert "You can add up to 10 more photos, or review and start." in text
    assert buttons == [[Button("▶ Review and start", REVIEW_CALLBACK)]]
    assert _status(20)[0].endswith("That's the maximum. Review and start.")
    text, buttons = _status(12, collecting=False)
    assert text.endswith("Accepted: 12 photos (you need 10–20).") and buttons is None


def test_refused_photos_are_listed_in_the_order_sent_the_latest_few() -> None:
    text, _ = _status(4, refused=3)
    assert text.endswith(
        "Not accepted: 3 photos\n• photo 1 — no face\n• photo 2 — no face\n• IMG_3.jpg — no face"
    )
    text, _ = _status(4, refused=REFUSED_SHOWN + 3)
    lines = text.split("\n")
    assert lines[-REFUSED_SHOWN - 2 :][:2] == [f"Not accepted: {REFUSED_SHOWN + 3} photos", "…and 3 earlier"]
    assert lines[-1] == f"• photo {REFUSED_SHOWN + 3} — no face"
    assert "• photo 3 —" not in text
