"""GET /healthz (the process serves) and GET /readyz (its dependencies answer)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from aisha.api.deps import runtime_of
from aisha.health import check_all


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    results = await check_all(runtime.services, runtime.bot)
    ready = not any(r.failing for r in results)
    body: dict[str, Any] = {
        "status": "ok" if ready else "down",
        "checks": {r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in results},
    }
    return web.json_response(body, status=200 if ready else 503)


routes = [web.get("/healthz", healthz), web.get("/readyz", readyz)]
