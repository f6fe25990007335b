"""GET /metrics: Prometheus text format, only for clients in METRICS_ALLOWED_NETWORKS (when set)
and behind a bearer token (when METRICS_TOKEN is set); with both set, both are required."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from ipaddress import IPv6Address, ip_address

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from aisha.api.deps import refusal, rules_of, runtime_of
from aisha.api.telegram import secret_matches
from aisha.config import Network


def peer_allowed(host: str | None, networks: Sequence[Network]) -> bool:
    """Whether the socket peer is in one of `networks`. X-Forwarded-For is never read: anyone can
    send it, so behind a proxy the proxy's own address is what must be allowed."""
    if not networks:
        return True
    try:
        address = ip_address(host or "")
    except ValueError:  # no peer, or a unix socket
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket reports 10.0.0.1 as ::ffff:10.0.0.1
    return any(address in network for network in networks)


async def metrics(request: web.Request) -> web.Response:
    rules = rules_of(request)
    # request.remote is the socket's peer: aiohttp never takes it from a forwarding header.
    if not peer_allowed(request.remote, rules.metrics_networks):
        return refusal(HTTPStatus.FORBIDDEN, "metrics are not served to this address")
    if rules.metrics_token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret_matches(rules.metrics_token, given.strip()):
            return refusal(
                HTTPStatus.UNAUTHORIZED, "metrics need a bearer token", {"WWW-Authenticate": "Bearer"}
            )
    runtime = runtime_of(request)
    body = await runtime.services.metrics.render(runtime.services.sessions)
    # The type as a header: it carries a charset, which aiohttp's content_type argument refuses.
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


routes = [web.get("/metrics", metrics)]
