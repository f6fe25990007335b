"""GET /metrics by the client's address (METRICS_ALLOWED_NETWORKS) and token, with fake peers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.api.app import create_api
from aisha.api.metrics import peer_allowed
from aisha.config import load_settings

TOKEN = "metrics-token-0123456789"


class _Metrics:
    async def render(self, sessions: async_sessionmaker[AsyncSession]) -> bytes:
        return b"aisha_up 1\n"


async def _get(peer: str, headers: dict[str, str] | None = None, **settings: Any) -> int:
    runtime = SimpleNamespace(
        settings=load_settings(**settings), services=SimpleNamespace(metrics=_Metrics(), sessions=None)
    )
    app = create_api(runtime)  # type: ignore[arg-type]

    @web.middleware
    async def from_peer(request: web.Request, handler: Any) -> web.StreamResponse:
        # As if the socket's peer were `peer` (the test client itself is always on 127.0.0.1).
        return await handler(request.clone(remote=peer))

    app.middlewares.append(from_peer)
    async with TestClient(TestServer(app)) as client:
        return (await client.get("/metrics", headers=headers or {})).status


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.20.30.40", True),
        ("::ffff:10.1.2.3", True),  # a dual-stack socket's spelling of an IPv4 peer
        ("11.0.0.1", False),
        ("192.168.1.5", False),
        ("::1", False),
        ("", False),
        ("not-an-address", False),
    ],
)
def test_peer_is_checked_against_the_networks(peer: str, allowed: bool) -> None:
    networks = load_settings(metrics_allowed_networks="127.0.0.1/32,10.0.0.0/8").metrics_allowed_networks
    assert peer_allowed(peer, networks) is allowed


def test_no_networks_means_no_address_check() -> None:
    assert peer_allowed("203.0.113.9", ())


async def test_outside_the_network_gets_403_inside_200() -> None:
    networks = "10.0.0.0/8"
    assert await _get("10.0.0.7", metrics_allowed_networks=networks) == 200
    assert await _get("172.16.0.1", metrics_allowed_networks=networks) == 403
    # A forged header changes nothing: only the socket peer counts.
    forged = {"X-Forwarded-For": "10.0.0.7", "X-Real-IP": "10.0.0.7"}
    assert await _get("172.16.0.1", forged, metrics_allowed_networks=networks) == 403


async def test_network_and_token_are_both_required_when_both_are_set() -> None:
    both = {"metrics_allowed_networks": "10.0.0.0/8", "metrics_token": TOKEN}
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert await _get("10.0.0.7", bearer, **both) == 200
    assert await _get("10.0.0.7", **both) == 401  # inside, without the token
    assert await _get("172.16.0.1", bearer, **both) == 403  # the token, from outside
