"""FAL webhook verification with locally generated Ed25519 keys and a JWKS served by httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha.clock import FrozenClock
from aisha.providers.fal_webhook import (
    HEADER_REQUEST_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_USER_ID,
    FalWebhookVerifier,
    JwksUnavailable,
    WebhookRejected,
    parse_jwks,
    parse_webhook,
    signed_message,
)

JWKS_URL = "https://rest.example/.well-known/jwks.json"
REQUEST_ID = "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d"
BODY = json.dumps(
    {
        "request_id": REQUEST_ID,
        "gateway_request_id": REQUEST_ID,
        "status": "OK",
        "payload": {"images": [{"url": "https://cdn.example/a.png", "width": 8, "height": 8}], "seed": 7},
    }
).encode()


def jwk(key: Ed25519PrivateKey, *, padded: bool = False) -> dict[str, str]:
    x = base64.urlsafe_b64encode(key.public_key().public_bytes_raw()).decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x if padded else x.rstrip("=")}


class Jwks:
    """A JWKS endpoint whose keys and availability a test changes."""

    def __init__(self, *keys: Ed25519PrivateKey) -> None:
        self.keys = list(keys)
        self.requests = 0
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.down:
            return httpx.Response(503, text="unavailable")
        return httpx.Response(200, json={"keys": [jwk(k) for k in self.keys]})


@pytest.fixture
def fal_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def jwks(fal_key: Ed25519PrivateKey) -> Jwks:
    return Jwks(fal_key)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def http(jwks: Jwks) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(jwks.handler)) as client:
        yield client


@pytest.fixture
def verifier(http: httpx.AsyncClient, clock: FrozenClock) -> FalWebhookVerifier:
    return FalWebhookVerifier(JWKS_URL, http=http, clock=clock)


def headers(
    key: Ed25519PrivateKey,
    clock: FrozenClock,
    *,
    body: bytes = BODY,
    offset: int = 0,
    request_id: str = REQUEST_ID,
    user_id: str = "user-42",
) -> dict[str, str]:
    timestamp = str(int(clock.now().timestamp()) + offset)
    message = signed_message(request_id=request_id, user_id=user_id, timestamp=timestamp, body=body)
    return {
        HEADER_REQUEST_ID: request_id,
        HEADER_USER_ID: user_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_SIGNATURE: key.sign(message).hex(),
    }


async def rejected(verifier: FalWebhookVerifier, hdrs: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(WebhookRejected) as caught:
        await verifier.verify(hdrs, body)
    return caught.value.reason


# ------------------------------------------------------------------------------- genuine


async def test_genuine_webhook_passes_and_parses(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    await verifier.verify(headers(fal_key, clock), BODY)
    webhook = await verifier.verify_and_parse(headers(fal_key, clock), BODY)
    assert webhook.ok
    assert webhook.request_id == REQUEST_ID
    assert webhook.payload is not None and webhook.payload["seed"] == 7
    assert verifier.fetches == 1  # keys cached between the two


async def test_header_names_are_case_insensitive(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    lower = {k.lower(): v for k, v in headers(fal_key, clock).items()}
    await verifier.verify(lower, BODY)


async def test_timestamp_at_the_edge_of_the_window_passes(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    await verifier.verify(headers(fal_key, clock, offset=-300), BODY)
    await verifier.verify(headers(fal_key, clock, offset=300), BODY)


async def test_padded_jwk_and_other_key_types_are_handled(fal_key: Ed25519PrivateKey) -> None:
    keys = parse_jwks({"keys": [{"kty": "RSA", "n": "abc", "e": "AQAB"}, jwk(fal_key, padded=True)]})
    assert [k.public_bytes_raw() for k in keys] == [fal_key.public_key().public_bytes_raw()]
    with pytest.raises(ValueError, match="no Ed25519"):
        parse_jwks({"keys": [{"kty": "RSA"}]})


# ------------------------------------------------------------------------------- forged


async def test_tampered_body_is_rejected(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    tampered = BODY.replace(b'"OK"', b'"ERROR"')
    assert await rejected(verifier, headers(fal_key, clock), tampered) == "signature matches no FAL key"


async def test_signed_fields_cannot_be_swapped(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    hdrs = headers(fal_key, clock)
    hdrs[HEADER_USER_ID] = "someone-else"
    await rejected(verifier, hdrs)
    hdrs = headers(fal_key, clock)
    hdrs[HEADER_TIMESTAMP] = str(int(hdrs[HEADER_TIMESTAMP]) - 1)
    await rejected(verifier, hdrs)


async def test_wrong_key_is_rejected_after_one_rate_limited_refresh(
    verifier: FalWebhookVerifier, jwks: Jwks, clock: FrozenClock
) -> None:
    forger = Ed25519PrivateKey.generate()
    await rejected(verifier, headers(forger, clock))
    assert jwks.requests == 1  # the first fetch was just made: no second one at once

    clock.advance(timedelta(seconds=61))
    await rejected(verifier, headers(forger, clock))
    assert jwks.requests == 2  # an unknown key triggers one refresh...

    for _ in range(50):
        await rejected(verifier, headers(forger, clock))
    assert jwks.requests == 2  # ...and a flood of forgeries no more within the interval


async def test_unknown_key_refreshes_the_jwks_then_passes_after_rotation(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, jwks: Jwks, clock: FrozenClock
) -> None:
    await verifier.verify(headers(fal_key, clock), BODY)
    rotated = Ed25519PrivateKey.generate()
    jwks.keys = [rotated]
    clock.advance(timedelta(minutes=5))
    await verifier.verify(headers(rotated, clock), BODY)
    assert jwks.requests == 2
    # The old key is gone from the cache now.
    await rejected(verifier, headers(fal_key, clock))


async def test_concurrent_webhooks_share_one_jwks_fetch(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, jwks: Jwks, clock: FrozenClock
) -> None:
    await asyncio.gather(*(verifier.verify(headers(fal_key, clock), BODY) for _ in range(20)))
    assert jwks.requests == 1


@pytest.mark.parametrize(("offset", "reason"), [(-301, "old"), (-86400, "old"), (301, "future")])
async def test_timestamp_outside_the_window_is_rejected(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock, offset: int, reason: str
) -> None:
    assert reason in await rejected(verifier, headers(fal_key, clock, offset=offset))


@pytest.mark.parametrize("value", ["", "abc", "1.7e9", "-5", "99999999999999", "١٧٦٧٢٢٥٦٠٠"])
async def test_malformed_timestamp_is_rejected(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock, value: str
) -> None:
    hdrs = headers(fal_key, clock)
    hdrs[HEADER_TIMESTAMP] = value
    await rejected(verifier, hdrs)


@pytest.mark.parametrize("name", [HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE])
async def test_missing_header_is_rejected(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock, name: str
) -> None:
    hdrs = headers(fal_key, clock)
    del hdrs[name]
    assert await rejected(verifier, hdrs) == f"missing header {name}"


@pytest.mark.parametrize(("signature", "reason"), [("zz" * 64, "not hex"), ("ab" * 32, "wrong length")])
async def test_malformed_signature_is_rejected(
    verifier: FalWebhookVerifier,
    fal_key: Ed25519PrivateKey,
    clock: FrozenClock,
    jwks: Jwks,
    signature: str,
    reason: str,
) -> None:
    hdrs = headers(fal_key, clock)
    hdrs[HEADER_SIGNATURE] = signature
    assert reason in await rejected(verifier, hdrs)
    assert jwks.requests == 0  # cheap checks come before any key lookup


async def test_body_request_id_must_match_the_signed_one(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, clock: FrozenClock
) -> None:
    hdrs = headers(fal_key, clock, request_id="another-request")
    await verifier.verify(hdrs, BODY)  # the signature itself is fine
    with pytest.raises(WebhookRejected, match="differs"):
        await verifier.verify_and_parse(hdrs, BODY)


# ------------------------------------------------------------------------------- the JWKS cache


async def test_unreachable_jwks_with_no_cached_key_is_unavailable_not_rejected(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, jwks: Jwks, clock: FrozenClock
) -> None:
    jwks.down = True
    with pytest.raises(JwksUnavailable):
        await verifier.verify(headers(fal_key, clock), BODY)
    with pytest.raises(JwksUnavailable):
        await verifier.verify(headers(fal_key, clock), BODY)
    assert jwks.requests == 1  # a failing JWKS isn't hammered either
    jwks.down = False
    clock.advance(timedelta(seconds=61))
    await verifier.verify(headers(fal_key, clock), BODY)


async def test_keys_are_refetched_after_the_ttl_and_stale_keys_survive_an_outage(
    verifier: FalWebhookVerifier, fal_key: Ed25519PrivateKey, jwks: Jwks, clock: FrozenClock
) -> None:
    await verifier.verify(headers(fal_key, clock), BODY)
    clock.advance(timedelta(hours=23))
    await verifier.verify(headers(fal_key, clock), BODY)
    assert jwks.requests == 1
    clock.advance(timedelta(hours=2))
    await verifier.verify(headers(fal_key, clock), BODY)
    assert jwks.requests == 2
    clock.advance(timedelta(hours=25))
    jwks.down = True
    await verifier.verify(headers(fal_key, clock), BODY)  # stale keys still verify
    assert jwks.requests == 3


# ------------------------------------------------------------------------------- parsing


def test_parse_error_webhook() -> None:
    body = json.dumps(
        {
            "request_id": "r1",
            "gateway_request_id": "r1",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]},
        }
    ).encode()
    webhook = parse_webhook(body)
    assert not webhook.ok
    assert webhook.error == "Invalid status code: 422"
    assert webhook.payload == {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}


def test_parse_payload_error_webhook() -> None:
    body = b'{"request_id": "r1", "status": "OK", "payload": null, "payload_error": "too large"}'
    webhook = parse_webhook(body)
    assert webhook.ok and webhook.payload is None and webhook.payload_error == "too large"


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"status": "OK"}', b'{"request_id": "r", "status": "DONE"}', b"\xff\xfe"]
)
def test_parse_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(WebhookRejected):
        parse_webhook(body)


async def test_a_webhook_signed_for_another_fal_user_is_refused_when_our_user_id_is_set(
    http: httpx.AsyncClient, clock: FrozenClock, fal_key: Ed25519PrivateKey
) -> None:
    ours = FalWebhookVerifier(JWKS_URL, http=http, clock=clock, user_id="user-42")
    await ours.verify(headers(fal_key, clock, user_id="user-42"), BODY)
    # Genuinely signed by FAL, for another account's job.
    assert (
        await rejected(ours, headers(fal_key, clock, user_id="user-7")) == "webhook is for another FAL user"
    )
    # Without the setting any FAL user's webhook is checked by its signature alone.
    anyone = FalWebhookVerifier(JWKS_URL, http=http, clock=clock)
    await anyone.verify(headers(fal_key, clock, user_id="user-7"), BODY)
