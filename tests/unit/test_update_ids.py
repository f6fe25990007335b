"""Finding an update's id in JSON too deep to parse, for the log line that reports it skipped."""

from __future__ import annotations

from aisha.bot.updates import find_update_id


def test_the_id_is_found_at_its_own_depth_and_not_inside_texts_or_nested_objects() -> None:
    body = '{"message": {"text": "\\"update_id\\": 1", "x": {"update_id": 2}}, "update_id" : 3}'
    assert find_update_id(body, depth=1) == 3
    response = '{"ok": true, "result": [{"message": {"update_id": 4}, "update_id": 5}, {"update_id": 6}]}'
    assert find_update_id(response.encode(), depth=3) == 5


def test_no_id_gives_none() -> None:
    assert find_update_id('{"message": {"update_id": 1}}', depth=1) is None
    assert find_update_id('{"update_id": "7"}', depth=1) is None
    assert find_update_id("[[[[", depth=1) is None
