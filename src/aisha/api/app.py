"""The HTTP app: Telegram's webhook, health, and (with features) FAL webhooks and file links."""

from __future__ import annotations

from aiohttp import web

from aisha.api import fal, files, health, metrics, telegram
from aisha.api.deps import RULES, RUNTIME, AppContext, HttpRules


def create_api(runtime: AppContext) -> web.Application:
    app = web.Application()
    app[RUNTIME] = runtime
    app[RULES] = HttpRules.from_settings(runtime.settings)
    app[fal.FAL_WEBHOOKS] = fal.feature_targets(runtime.services)
    for routes in (health.routes, metrics.routes, telegram.routes, files.routes, fal.routes):
        app.add_routes(routes)
    return app
