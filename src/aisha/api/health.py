"""GET /healthz (the process serves) and GET /readyz (its dependencies answer)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from aisha.api.deps import RuntimeDep
from aisha.health import check_all

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    results = await check_all(runtime.services, runtime.bot)
    ready = not any(r.failing for r in results)
    body: dict[str, Any] = {
        "status": "ok" if ready else "down",
        "checks": {r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in results},
    }
    return JSONResponse(body, status_code=200 if ready else 503)
