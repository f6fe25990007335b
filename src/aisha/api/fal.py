"""POST /webhooks/fal: FAL's signed job results, routed to the feature that submitted the job.

The URL we submit (built by `providers.fal.webhook_url`) carries `?kind=<feature>&id=<row id>`;
it only says where to look. What counts is FAL's Ed25519 signature over the request id and body:
the feature acts only if the signed request id is the one its row holds. Anything unsigned, stale
or forged gets 401 and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from aisha.api.body import BodyIncomplete, BodyTooLarge, read_capped
from aisha.api.deps import refusal, runtime_of
from aisha.db.base import parse_uuid
from aisha.providers.fal import WEBHOOK_PATH
from aisha.providers.fal_webhook import JwksUnavailable, WebhookRejected
from aisha.remote import RemoteWebhook

if TYPE_CHECKING:
    from aisha.container import Services

MAX_BODY_BYTES = 2 * 1024 * 1024  # a training or image result is a few KB of JSON

# (the id from the URL, the verified webhook) → whether it was acted on (applied, or queued for a job)
WebhookTarget = Callable[[str, RemoteWebhook], Awaitable[bool]]

log = structlog.get_logger(__name__)


class FalWebhookRegistry:
    """Features register the `kind` they put in their webhook URLs (avatars: "avatar")."""

    def __init__(self) -> None:
        self._targets: dict[str, WebhookTarget] = {}

    def register(self, kind: str, target: WebhookTarget) -> None:
        if kind in self._targets:
            raise ValueError(f"FAL webhook kind {kind!r} is registered twice")
        self._targets[kind] = target

    def get(self, kind: str) -> WebhookTarget | None:
        return self._targets.get(kind)

    @property
    def kinds(self) -> list[str]:
        return sorted(self._targets)


def feature_targets(services: Services) -> FalWebhookRegistry:
    """The kinds our services put in their webhook URLs, each routed to its feature's service."""
    registry = FalWebhookRegistry()

    async def generation(row_id: str, webhook: RemoteWebhook) -> bool:
        generation_id = parse_uuid(row_id)
        return generation_id is not None and await services.generation.apply_webhook(
            generation_id=generation_id, webhook=webhook
        )

    async def avatar(row_id: str, webhook: RemoteWebhook) -> bool:
        avatar_id = parse_uuid(row_id)
        return avatar_id is not None and await services.avatars.apply_webhook(
            avatar_id=avatar_id, webhook=webhook
        )

    registry.register("generation", generation)
    registry.register("avatar", avatar)
    return registry


FAL_WEBHOOKS = web.AppKey("fal_webhooks", FalWebhookRegistry)


async def fal_webhook(request: web.Request) -> web.Response:
    kind, row_id = request.query.get("kind", ""), request.query.get("id", "")
    verifier = runtime_of(request).services.fal_verifier
    if verifier is None:
        return refusal(HTTPStatus.NOT_FOUND, "FAL is not configured")
    try:
        body = await read_capped(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        log.warning("webhook.fal.too_large", kind=kind[:32])
        return refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
    except BodyIncomplete:  # gone before its body was complete: nobody to answer
        return refusal(HTTPStatus.BAD_REQUEST, "incomplete body")
    try:
        webhook = await verifier.verify_and_parse(request.headers, body)
    except WebhookRejected as exc:
        log.warning("webhook.fal.rejected", reason=exc.reason, kind=kind)
        return refusal(HTTPStatus.UNAUTHORIZED, "invalid FAL signature")
    except JwksUnavailable:
        log.error("webhook.fal.no_keys")
        return refusal(HTTPStatus.SERVICE_UNAVAILABLE, "FAL keys unavailable")
    target = request.app[FAL_WEBHOOKS].get(kind)
    if target is None:
        # Genuine but not ours to route: answer 200 so FAL stops retrying.
        log.warning("webhook.fal.unknown_kind", kind=kind[:32], request_id=webhook.request_id)
        return web.json_response({"ok": True, "changed": False})
    changed = await target(row_id, webhook)
    log.info("webhook.fal.handled", kind=kind, request_id=webhook.request_id, changed=changed)
    return web.json_response({"ok": True, "changed": changed})


routes = [web.post(WEBHOOK_PATH, fal_webhook)]
