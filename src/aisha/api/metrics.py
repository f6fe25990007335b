"""GET /metrics: Prometheus text format, only for clients in METRICS_ALLOWED_NETWORKS (when set)
and behind a bearer token (when METRICS_TOKEN is set); with both set, both are required."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv6Address, ip_address
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from aisha.api.deps import RulesDep, RuntimeDep
from aisha.api.telegram import secret_matches
from aisha.config import Network

router = APIRouter()


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


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request,
    runtime: RuntimeDep,
    rules: RulesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    if not peer_allowed(request.client.host if request.client else None, rules.metrics_networks):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "metrics are not served to this address")
    if rules.metrics_token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret_matches(rules.metrics_token, given.strip()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "metrics need a bearer token", {"WWW-Authenticate": "Bearer"}
            )
    body = await runtime.services.metrics.render(runtime.services.sessions)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
