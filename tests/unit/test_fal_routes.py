"""FAL webhook kinds are routed by the HTTP app to the service that submitted the job."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from aisha.api.fal import feature_targets
from aisha.remote import RemoteWebhook

WEBHOOK = RemoteWebhook(request_id="req-1", gateway_request_id=None, status="OK", payload={}, error=None)


class _Service:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def apply_webhook(self, **kwargs: Any) -> bool:
        self.calls.append(kwargs)
        return True


async def test_each_kind_reaches_its_service_with_the_row_id() -> None:
    generation, avatars = _Service(), _Service()
    registry = feature_targets(SimpleNamespace(generation=generation, avatars=avatars))  # type: ignore[arg-type]
    assert registry.kinds == ["avatar", "generation"]
    row = uuid.uuid4()

    generation_target = registry.get("generation")
    avatar_target = registry.get("avatar")
    assert generation_target is not None and avatar_target is not None
    assert await generation_target(str(row), WEBHOOK) is True
    assert await avatar_target(str(row), WEBHOOK) is True
    assert generation.calls == [{"generation_id": row, "webhook": WEBHOOK}]
    assert avatars.calls == [{"avatar_id": row, "webhook": WEBHOOK}]


async def test_an_id_that_is_no_row_id_changes_nothing() -> None:
    generation, avatars = _Service(), _Service()
    registry = feature_targets(SimpleNamespace(generation=generation, avatars=avatars))  # type: ignore[arg-type]
    for kind in ("generation", "avatar"):
        target = registry.get(kind)
        assert target is not None
        assert await target("not-a-uuid", WEBHOOK) is False
    assert generation.calls == [] and avatars.calls == []
