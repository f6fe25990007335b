"""The HTTP app: Telegram's webhook, health, and (with features) FAL webhooks and file links."""

from __future__ import annotations

from fastapi import FastAPI

from aisha import __version__
from aisha.api import fal, files, health, metrics, telegram
from aisha.api.deps import AppContext, HttpRules


def create_api(runtime: AppContext) -> FastAPI:
    app = FastAPI(title="Aisha", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.state.rules = HttpRules.from_settings(runtime.settings)
    app.state.fal_webhooks = fal.feature_targets(runtime.services)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(telegram.router)
    app.include_router(files.router)
    app.include_router(fal.router)
    return app
