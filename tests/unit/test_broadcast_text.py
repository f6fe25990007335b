"""A broadcast's text is checked as Telegram's HTML parse mode would check it, before anything is
queued; the refusal tells the admin why, in their language, in HTML Telegram accepts."""

from __future__ import annotations

import pytest

from aisha.admin.errors import BroadcastRefused
from aisha.bot.presenters.admin import error_text
from aisha.i18n import Translator
from aisha.telegram_html import TEXT_LIMIT, html_refusal

translator = Translator.load()


@pytest.mark.parametrize(
    "text",
    [
        "Big news",
        "<b>Sale</b> today: <i>50%</i> off &amp; more",
        'A <a href="https://example.com/?a=1&amp;b=2">link</a> and <code>code</code>',
        '<span class="tg-spoiler">hidden</span> <tg-spoiler>too</tg-spoiler> <s>old</s> <u>new</u>',
        '<pre><code class="language-python">print(1)</code></pre><blockquote expandable>q</blockquote>',
        "<b>bold <i>and italic</i></b>",
        "1 &lt; 2 and 3 > 2 & so on",  # a bare ">" or "&" is text; a "<" must be written &lt;
        "x" * TEXT_LIMIT,
    ],
)
def test_a_text_telegram_accepts_is_let_through(text: str) -> None:
    assert html_refusal(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<b>Sale", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>Sale</b></i>", 'Unmatched end tag at byte offset 10, expected "</i>", found "</b>"'),
        ("Sale</b>", "Unexpected end tag at byte offset 4"),
        ("<div>Sale</div>", 'Unsupported start tag "div" at byte offset 0'),
        ("<p>Sale</p>", 'Unsupported start tag "p" at byte offset 0'),
        ("1 < 2", 'Unsupported start tag "" at byte offset 2'),
        ('<span class="x">Sale</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("<b", "Unclosed start tag at byte offset 0"),
    ],
)
def test_html_telegram_would_refuse_is_refused_in_its_words(text: str, reason: str) -> None:
    assert html_refusal(text) == f"can't parse entities: {reason}"


def test_nothing_to_show_or_too_long_is_refused() -> None:
    assert html_refusal("<b> </b>") == "message text is empty"
    assert html_refusal("x" * (TEXT_LIMIT + 1)) == "message is too long"
    # Counted as Telegram counts: after the tags are parsed, in UTF-16 code units.
    assert html_refusal(f"<b>{'x' * TEXT_LIMIT}</b>") is None
    assert html_refusal("😀" * (TEXT_LIMIT // 2 + 1)) == "message is too long"


@pytest.mark.parametrize(
    ("locale", "start"),
    [
        ("en", "Telegram would refuse this text, so nothing was queued"),
        ("ru", "Telegram не примет этот текст"),
    ],
)
def test_the_admin_is_told_why_in_html_telegram_accepts(locale: str, start: str) -> None:
    error = BroadcastRefused(html_refusal("<div>Sale</div>") or "")
    text = error_text(translator.bind(locale), error)
    assert text.startswith(start)
    assert 'Unsupported start tag "div" at byte offset 0' in text
    assert html_refusal(text) is None  # the reason quotes the admin's tags: escaped, it is sent
