"""GET /metrics: Prometheus text format, behind a bearer token when METRICS_TOKEN is set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST

from aisha.api.deps import RuntimeDep
from aisha.api.telegram import secret_matches

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = runtime.settings.metrics_token
    if token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret_matches(token.get_secret_value(), given.strip()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "metrics need a bearer token", {"WWW-Authenticate": "Bearer"}
            )
    body = await runtime.services.metrics.render(runtime.services.sessions)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
