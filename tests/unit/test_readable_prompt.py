"""The prompt shown to a user never carries an avatar's trigger token."""

from __future__ import annotations

from aisha.bot.presenters.generation import readable_prompt


def test_a_portraits_token_reads_as_me() -> None:
    shown = readable_prompt("ohwx21e8f17299 as an astronaut on Mars, golden hour", "ohwx21e8f17299")
    assert shown == "me as an astronaut on Mars, golden hour"


def test_a_styles_token_reads_as_my_avatar() -> None:
    shown = readable_prompt("a red fox in the snow, in the style of ohwxab12cd34ef, 35mm", "ohwxab12cd34ef")
    assert shown == "a red fox in the snow, in the style of my avatar, 35mm"


def test_the_token_of_an_avatar_deleted_since_is_hidden_too() -> None:
    assert readable_prompt("ohwx0123456789, smiling", None) == "me, smiling"


def test_a_prompt_without_an_avatar_is_left_alone() -> None:
    assert readable_prompt("a lighthouse at dawn", None) == "a lighthouse at dawn"
