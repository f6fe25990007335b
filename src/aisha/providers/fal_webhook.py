"""Verification of FAL's signed webhooks, and parsing of their body.

FAL signs every webhook with Ed25519 (https://docs.fal.ai/model-apis/model-endpoints/webhooks):

- headers ``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id``, ``X-Fal-Webhook-Timestamp``
  (Unix seconds) and ``X-Fal-Webhook-Signature`` (hex);
- the signed message is ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" +
  sha256_hex(raw body)`` in UTF-8;
- the public keys are the JWKS at ``FAL_JWKS_URL`` (``kty: OKP``, ``crv: Ed25519``, ``x``
  base64url); a signature is good if any key verifies it; the timestamp must be within ±5 min.

FAL names no key id, so a key FAL has just rotated in looks exactly like a forgery: both verify
against none of the cached keys. Either case triggers one JWKS refresh, at most one per
``refresh_interval``, so a flood of forged requests costs FAL one fetch a minute, not one each.

A genuine webhook can be replayed within the time window; handlers must be idempotent by
request id (the job row's status makes them so).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from aisha.clock import Clock, SystemClock
from aisha.remote import RemoteWebhook

if TYPE_CHECKING:
    # Imported where keys are parsed and checked: a process loads cryptography (7 MB here) at its
    # first FAL webhook, not at start.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "HEADER_REQUEST_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "HEADER_USER_ID",
    "FalWebhookVerifier",
    "JwksUnavailable",
    "WebhookRejected",
    "parse_jwks",
    "parse_webhook",
    "signed_message",
]

log = structlog.get_logger(__name__)

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"
_REQUIRED = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)
_SIGNATURE_BYTES = 64
_MAX_JWKS_BYTES = 256 * 1024


class WebhookRejected(Exception):
    """The request is not a genuine FAL webhook (answer 401/400, never process it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JwksUnavailable(Exception):
    """No FAL public key is known and the JWKS can't be fetched: answer 503 so FAL retries later."""


def signed_message(*, request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes FAL signs for one delivery."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


def parse_webhook(body: bytes) -> RemoteWebhook:
    """Parse a (verified) webhook body: ``{request_id, gateway_request_id, status, payload, error?, payload_error?}``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected("webhook body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected("webhook body is not a JSON object")
    request_id = data.get("request_id")
    status = data.get("status")
    if not isinstance(request_id, str) or not request_id:
        raise WebhookRejected("webhook body has no request_id")
    if status not in ("OK", "ERROR"):
        raise WebhookRejected(f"webhook status is neither OK nor ERROR: {status!r}")
    payload = data.get("payload")
    gateway = data.get("gateway_request_id")
    return RemoteWebhook(
        request_id=request_id,
        status=status,
        payload=payload if isinstance(payload, dict) else None,
        error=_text(data.get("error")),
        gateway_request_id=gateway if isinstance(gateway, str) else None,
        payload_error=_text(data.get("payload_error")),
    )


class FalWebhookVerifier:
    """Checks FAL webhook signatures against FAL's JWKS, cached for ``cache_ttl``."""

    def __init__(
        self,
        jwks_url: str,
        *,
        http: httpx.AsyncClient,
        clock: Clock | None = None,
        leeway: int = 300,
        cache_ttl: timedelta = timedelta(hours=24),
        refresh_interval: timedelta = timedelta(seconds=60),
        fetch_timeout: float = 10.0,
        user_id: str | None = None,
    ) -> None:
        self._jwks_url = jwks_url
        # FAL signs webhooks of every account with the same keys: only the signed user id says
        # the job was ours (the request id check in each feature says which row).
        self._user_id = user_id
        self._http = http
        self._clock: Clock = clock or SystemClock()
        self._leeway = leeway
        self._cache_ttl = cache_ttl
        self._refresh_interval = refresh_interval
        self._fetch_timeout = fetch_timeout
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: datetime | None = None  # last successful fetch
        self._attempted_at: datetime | None = None  # last fetch, successful or not
        self._lock = asyncio.Lock()
        self.fetches = 0  # JWKS requests made, for tests and metrics

    async def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Return if ``body`` with ``headers`` is a genuine, fresh FAL webhook; raise WebhookRejected if not.

        Raises JwksUnavailable when no key is known at all and FAL's JWKS can't be fetched.
        """
        lower = {k.lower(): v for k, v in headers.items()}
        values: dict[str, str] = {}
        for name in _REQUIRED:
            value = lower.get(name.lower())
            if value is None or not value.strip():
                raise WebhookRejected(f"missing header {name}")
            values[name] = value.strip()
        if self._user_id is not None and values[HEADER_USER_ID] != self._user_id:
            raise WebhookRejected("webhook is for another FAL user")

        timestamp = values[HEADER_TIMESTAMP]
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
            raise WebhookRejected("timestamp is not Unix seconds")
        skew = int(self._clock.now().timestamp()) - int(timestamp)
        if skew > self._leeway:
            raise WebhookRejected(f"timestamp is {skew} s old")
        if -skew > self._leeway:
            raise WebhookRejected(f"timestamp is {-skew} s in the future")

        try:
            signature = bytes.fromhex(values[HEADER_SIGNATURE])
        except ValueError:
            raise WebhookRejected("signature is not hex") from None
        if len(signature) != _SIGNATURE_BYTES:
            raise WebhookRejected("signature has the wrong length")

        message = signed_message(
            request_id=values[HEADER_REQUEST_ID],
            user_id=values[HEADER_USER_ID],
            timestamp=timestamp,
            body=body,
        )
        keys = await self._current_keys()
        if _any_verifies(keys, signature, message):
            return
        # No cached key matched: FAL may have rotated its keys. Look once, rate-limited.
        fresh = await self._refresh(force=True)
        if fresh is not None and _raw(fresh) != _raw(keys) and _any_verifies(fresh, signature, message):
            return
        raise WebhookRejected("signature matches no FAL key")

    async def verify_and_parse(self, headers: Mapping[str, str], body: bytes) -> RemoteWebhook:
        """``verify`` then ``parse_webhook``, checking that the signed request id is the body's."""
        await self.verify(headers, body)
        webhook = parse_webhook(body)
        signed_id = {k.lower(): v for k, v in headers.items()}[HEADER_REQUEST_ID.lower()].strip()
        if webhook.request_id != signed_id:
            raise WebhookRejected("request id in the body differs from the signed one")
        return webhook

    # ----------------------------------------------------------------------------- keys

    async def _current_keys(self) -> tuple[Ed25519PublicKey, ...]:
        now = self._clock.now()
        if self._keys and self._fetched_at is not None and now - self._fetched_at < self._cache_ttl:
            return self._keys
        fresh = await self._refresh(force=False)
        if fresh:
            return fresh
        if self._keys:
            return self._keys  # stale, but better than rejecting genuine webhooks during an outage
        raise JwksUnavailable("no FAL webhook key is known and the JWKS could not be fetched")

    async def _refresh(self, *, force: bool) -> tuple[Ed25519PublicKey, ...] | None:
        """Fetch the JWKS unless one was fetched (or tried) within ``refresh_interval``.

        Returns the keys now cached, or None when nothing was fetched or the fetch failed.
        ``force`` is the unknown-key refresh: it skips the TTL check but not the rate limit.
        """
        async with self._lock:  # concurrent webhooks share one fetch
            now = self._clock.now()
            if (
                not force
                and self._keys
                and self._fetched_at is not None
                and now - self._fetched_at < self._cache_ttl
            ):
                return self._keys  # another task refreshed while this one waited
            if self._attempted_at is not None and now - self._attempted_at < self._refresh_interval:
                return None
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("fal_jwks_fetch_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                return None
            self._keys = keys
            self._fetched_at = now
            log.info("fal_jwks_fetched", keys=len(keys))
            return keys

    async def _fetch(self) -> tuple[Ed25519PublicKey, ...]:
        response = await self._http.get(
            self._jwks_url, timeout=self._fetch_timeout, headers={"Accept": "application/json"}
        )
        response.raise_for_status()
        if len(response.content) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS response is too large")
        return parse_jwks(response.json())


def parse_jwks(data: Any) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS document; other key types are skipped. Raises ValueError if none."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    raw_keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS has no keys list")
    keys: list[Ed25519PublicKey] = []
    for jwk in raw_keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            # base64url, padded or not (FAL's live JWKS has been seen with padding).
            raw = base64.urlsafe_b64decode(x.rstrip("=") + "=" * (-len(x.rstrip("=")) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            log.warning("fal_jwks_bad_key", x_length=len(x))
    if not keys:
        raise ValueError("JWKS has no Ed25519 key")
    return tuple(keys)


def _any_verifies(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    for key in keys:
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return True
    return False


def _raw(keys: tuple[Ed25519PublicKey, ...]) -> frozenset[bytes]:
    return frozenset(k.public_bytes_raw() for k in keys)


def _text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
