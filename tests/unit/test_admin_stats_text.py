"""The admin panel's statistics point out the refunds left for the operator, in both languages."""

from __future__ import annotations

import pytest

from aisha.admin.models import Stats
from aisha.bot.presenters.admin import stats_text
from aisha.i18n import Translator
from aisha.telegram_html import html_refusal

translator = Translator.load()


def _stats(refunds_waiting: int, charges: tuple[str, ...] = ()) -> Stats:
    return Stats(
        users_total=3,
        active_today=1,
        active_week=2,
        blocked=0,
        topups=110,
        spend=0,
        features=[],
        refunds_waiting=refunds_waiting,
        waiting_refund_charges=charges,
    )


@pytest.mark.parametrize(
    ("locale", "line"),
    [("en", "2 refunds of Stars Telegram never answered"), ("ru", "2 возврата звёзд без ответа Telegram")],
)
def test_refunds_waiting_for_the_operator_are_shown(locale: str, line: str) -> None:
    t = translator.bind(locale)
    assert line not in stats_text(t, _stats(0))
    text = stats_text(t, _stats(2, ("stxA1", "stx<b>")))
    # Each charge as the command that asks Telegram again, ready to copy; Telegram's ids escaped.
    assert line in text and text.endswith("\n<code>/refund stxA1</code>\n<code>/refund stx&lt;b&gt;</code>")
    assert html_refusal(text) is None
