"""The real FalClient and FalWebhookVerifier against FakeFalServer, over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from aiohttp import web

from aisha.providers.fal import FalClient, app_path, parse_images_result, parse_training_result
from aisha.providers.fal_webhook import FalWebhookVerifier, WebhookRejected
from aisha.remote import (
    CancelOutcome,
    RemoteAuthFailed,
    RemoteFailed,
    RemoteMalformedOutput,
    RemoteNotFound,
    RemoteNotReady,
    RemoteRefused,
    RemoteState,
    RemoteUnavailable,
    RemoteWebhook,
)
from aisha.sandbox.fal import FakeFalServer, png_bytes

PORTRAIT = "fal-ai/flux-lora-portrait-trainer"
FAST = "fal-ai/flux-lora-fast-training"
FLUX_LORA = "fal-ai/flux-lora"


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def archive_url(fal: FakeFalServer) -> str:
    """A training archive (two PNGs) where the fake's runner can fetch it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("01.png", png_bytes(8, 8))
        archive.writestr("02.png", png_bytes(8, 8, (1, 2, 3)))
    return fal.serve_file("train.zip", buffer.getvalue())


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def client(fal: FakeFalServer, http: httpx.AsyncClient) -> FalClient:
    return FalClient(key=fal.key, queue_url=fal.base_url, http=http, timeout=5.0, sleep=no_sleep)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ------------------------------------------------------------------------------- the queue


async def test_generation_submit_status_result(
    fal: FakeFalServer, client: FalClient, http: httpx.AsyncClient
) -> None:
    fal.nsfw_flags = [False, True]
    lora_url = fal.host_file("lora.safetensors", b"weights")
    payload = {
        "prompt": "portrait of TOK, cinematic",
        "loras": [{"path": lora_url, "scale": 1.0}],
        "image_size": "square",
        "num_images": 2,
        "seed": 1234,
        "enable_safety_checker": True,
        "output_format": "png",
    }
    submission = await client.submit(FLUX_LORA, payload)
    assert submission.status_url == f"{fal.base_url}/{FLUX_LORA}/requests/{submission.request_id}/status"
    assert [job.payload for job in fal.submissions] == [payload]

    status = await client.status(FLUX_LORA, submission.request_id)
    assert status.state is RemoteState.IN_QUEUE and status.queue_position == 0
    with pytest.raises(RemoteNotReady):
        await client.result(FLUX_LORA, submission.request_id)

    fal.start_job(submission.request_id)
    status = await client.status(FLUX_LORA, submission.request_id, logs=True)
    assert status.state is RemoteState.IN_PROGRESS and status.logs

    assert await fal.complete(submission.request_id) is None  # no webhook asked for
    status = await client.status(FLUX_LORA, submission.request_id)
    assert status.done and status.error is None

    output = parse_images_result(await client.result(FLUX_LORA, submission.request_id))
    assert output.seed == 1234
    assert [image.nsfw for image in output.images] == [False, True]
    assert all((image.width, image.height) == (512, 512) for image in output.images)
    for image in output.images:
        response = await http.get(image.url)
        assert response.headers["content-type"] == image.content_type == "image/png"
        assert png_size(response.content) == (512, 512)


async def test_subpath_endpoint_is_polled_under_owner_and_app(fal: FakeFalServer, client: FalClient) -> None:
    submission = await client.submit("fal-ai/flux/dev", {"prompt": "a cat"})
    await fal.complete(submission.request_id)
    assert (await client.status("fal-ai/flux/dev", submission.request_id)).done
    output = parse_images_result(await client.result("fal-ai/flux/dev", submission.request_id))
    assert len(output.images) == 1
    paths = [path for _, path in fal.requests]
    assert paths[0] == "/fal-ai/flux/dev"
    assert all(p.startswith(f"/fal-ai/flux/requests/{submission.request_id}") for p in paths[1:])


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        (PORTRAIT, {"trigger_phrase": "TOK", "steps": 1000, "data_archive_format": "zip"}),
        (FAST, {"trigger_word": "TOK", "is_style": True, "data_archive_format": "zip"}),
    ],
)
async def test_training_result(
    fal: FakeFalServer,
    client: FalClient,
    http: httpx.AsyncClient,
    archive_url: str,
    endpoint: str,
    payload: dict[str, object],
) -> None:
    submission = await client.submit(endpoint, {"images_data_url": archive_url, **payload})
    await fal.complete(submission.request_id)
    output = parse_training_result(await client.result(endpoint, submission.request_id))
    lora = await http.get(output.lora_url)
    assert lora.status_code == 200 and output.lora_url.endswith(".safetensors")
    (header_length,) = struct.unpack("<Q", lora.content[:8])
    assert lora.content[8 : 8 + header_length].strip().startswith(b"{")
    assert output.config_url is not None and (await http.get(output.config_url)).status_code == 200


async def test_pictures_drawn_with_a_trained_lora_show_the_subject_not_its_trigger(
    http: httpx.AsyncClient, archive_url: str
) -> None:
    drawn: list[str] = []

    def renderer(prompt: str, width: int, height: int, seed: int) -> bytes:
        drawn.append(prompt)
        return png_bytes(width, height)

    async with FakeFalServer(image_renderer=renderer) as fal:
        client = FalClient(key=fal.key, queue_url=fal.base_url, http=http, timeout=5.0, sleep=no_sleep)
        trainer = "fal-ai/flux-lora-portrait-trainer"
        archive = fal.serve_file("train.zip", (await http.get(archive_url)).content)
        training = await client.submit(
            trainer, {"images_data_url": archive, "trigger_phrase": "ohwx0123abcdef"}
        )
        await fal.complete(training.request_id)
        lora_url = parse_training_result(await client.result(trainer, training.request_id)).lora_url
        prompt = "ohwx0123abcdef as an astronaut on Mars, golden hour"
        submission = await client.submit(
            FLUX_LORA, {"prompt": prompt, "loras": [{"path": lora_url, "scale": 1.0}]}
        )
        await fal.complete(submission.request_id)
        assert parse_images_result(await client.result(FLUX_LORA, submission.request_id)).images
    # The model draws the person; the sandbox writes the rest of the prompt on the picture.
    assert drawn == ["as an astronaut on Mars, golden hour"]


async def test_auto_completion_after_a_delay(http: httpx.AsyncClient) -> None:
    async with FakeFalServer(complete_after=0.2) as fal:
        client = FalClient(key=fal.key, queue_url=fal.base_url, http=http)
        submission = await client.submit(FLUX_LORA, {"prompt": "x"})
        states = []
        async with asyncio.timeout(5):
            while True:
                status = await client.status(FLUX_LORA, submission.request_id)
                states.append(status.state)
                if status.done:
                    break
                await asyncio.sleep(0.03)
        assert states[0] is RemoteState.IN_QUEUE and RemoteState.IN_PROGRESS in states
        assert parse_images_result(await client.result(FLUX_LORA, submission.request_id)).images


# ------------------------------------------------------------------------------- refusals and failures


async def test_refusal_carries_the_providers_message(fal: FakeFalServer, client: FalClient) -> None:
    fal.refuse_next(422, [{"loc": ["body", "loras", 0, "path"], "msg": "LoRA file not found", "type": "x"}])
    with pytest.raises(RemoteRefused) as caught:
        await client.submit(FLUX_LORA, {"prompt": "x"})
    assert caught.value.status_code == 422
    assert caught.value.message == "loras.0.path: LoRA file not found"
    assert fal.submissions == []


async def test_invalid_input_is_refused_with_field_errors(fal: FakeFalServer, client: FalClient) -> None:
    with pytest.raises(RemoteRefused, match="num_images") as caught:
        await client.submit(FLUX_LORA, {"prompt": "x", "num_images": 9})
    assert caught.value.status_code == 422
    with pytest.raises(RemoteRefused, match="images_data_url"):
        await client.submit(PORTRAIT, {"trigger_phrase": "TOK"})
    assert fal.submissions == []


async def test_trainer_inputs_are_checked_against_their_schemas(
    fal: FakeFalServer, client: FalClient, archive_url: str
) -> None:
    refused = {
        "data_archive_format": {"data_archive_format": "rar"},
        "trigger_word": {"trigger_word": "TOK"},  # the portrait trainer's field is trigger_phrase
        "steps": {"steps": "1000"},
        "subject_crop": {"subject_crop": 1},
    }
    for field_name, extra in refused.items():
        with pytest.raises(RemoteRefused, match=field_name) as caught:
            await client.submit(PORTRAIT, {"images_data_url": archive_url, **extra})
        assert caught.value.status_code == 422
    with pytest.raises(RemoteRefused, match="trigger_phrase"):
        await client.submit(FAST, {"images_data_url": archive_url, "trigger_phrase": "TOK"})
    with pytest.raises(RemoteRefused, match="output_format"):
        await client.submit(FLUX_LORA, {"prompt": "x", "output_format": "gif"})
    with pytest.raises(RemoteRefused, match="num_inference_steps"):
        await client.submit(FLUX_LORA, {"prompt": "x", "num_inference_steps": 0})
    assert fal.submissions == []


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("http://127.0.0.1:9/train.zip", "file_download_error"),  # loopback
        ("http://minio:9000/aisha/train.zip?X-Amz-Signature=x", "file_download_error"),  # compose-only name
        ("http://10.1.2.3/train.zip", "file_download_error"),  # private
        ("missing", "file_download_error"),  # 404 on a reachable host
        ("not-a-zip", "image_load_error"),
        ("empty", "image_load_error"),
        ("not-images", "image_load_error"),
    ],
)
async def test_the_runner_fetches_the_archive_and_fails_the_job_when_it_cannot(
    fal: FakeFalServer, client: FalClient, receiver: Receiver, where: str, kind: str
) -> None:
    served = {
        "not-a-zip": b"%PDF-1.4 not a zip",
        "empty": _zip(),
        "not-images": _zip(**{"01.jpg": b"plain text, named like a photo"}),
    }
    if where in served:
        url = fal.serve_file(f"{where}.zip", served[where])
    elif where == "missing":
        url = f"{fal.base_url}/files/missing.zip"
    else:
        url = where
    submission = await client.submit(PORTRAIT, {"images_data_url": url}, webhook_url=receiver.url)
    async with asyncio.timeout(10):
        while not receiver.accepted:
            await asyncio.sleep(0.02)
    [webhook] = receiver.accepted
    assert not webhook.ok and webhook.error == "Invalid status code: 422"
    [problem] = webhook.payload["detail"]
    assert problem["loc"] == ["body", "images_data_url"] and problem["type"] == kind
    with pytest.raises(RemoteFailed) as caught:
        await client.result(PORTRAIT, submission.request_id)
    assert caught.value.status_code == 422
    with pytest.raises(ValueError, match="already completed"):
        await fal.complete(submission.request_id)  # a job that failed to start never succeeds


async def test_a_local_address_marked_reachable_is_fetched(
    fal: FakeFalServer, client: FalClient, archive_url: str
) -> None:
    data = _zip(**{"01.jpg": b"\xff\xd8\xff\xe0 jpeg", "01.txt": b"a caption"})

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/a.zip", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        fal.reachable(f"http://127.0.0.1:{port}")
        submission = await client.submit(PORTRAIT, {"images_data_url": f"http://127.0.0.1:{port}/a.zip"})
        await fal.complete(submission.request_id)
        assert fal.archives[submission.request_id] == ["01.jpg", "01.txt"]
        assert parse_training_result(await client.result(PORTRAIT, submission.request_id)).lora_url
    finally:
        await runner.cleanup()


async def test_wrong_key_is_an_auth_failure_that_never_shows_the_key(
    fal: FakeFalServer, http: httpx.AsyncClient
) -> None:
    secret = "wrong-secret-key-1234567890"
    client = FalClient(key=secret, queue_url=fal.base_url, http=http, sleep=no_sleep)
    with pytest.raises(RemoteAuthFailed) as caught:
        await client.submit(FLUX_LORA, {"prompt": "x"})
    assert caught.value.status_code == 401
    assert secret not in str(caught.value) and fal.key not in str(caught.value)
    assert secret not in repr(client)
    with pytest.raises(RemoteRefused):  # auth failures are refusals too
        await client.submit(FLUX_LORA, {"prompt": "x"})


@pytest.mark.parametrize(("error_status", "error_type"), [(422, None), (500, "runner_server_error")])
async def test_failed_job_raises_request_failed_without_retrying(
    fal: FakeFalServer, client: FalClient, archive_url: str, error_status: int, error_type: str | None
) -> None:
    submission = await client.submit(PORTRAIT, {"images_data_url": archive_url})
    await fal.complete(submission.request_id, error="no face found in the images", error_status=error_status)
    status = await client.status(PORTRAIT, submission.request_id)
    assert status.done and status.error == "no face found in the images"
    before = len(fal.requests)
    with pytest.raises(RemoteFailed, match="no face found") as caught:
        await client.result(PORTRAIT, submission.request_id)
    assert caught.value.status_code == error_status and caught.value.error_type == error_type
    assert len(fal.requests) == before + 1


@pytest.mark.parametrize("where", ["expired", "nowhere"])
async def test_a_lora_fal_cannot_download_fails_the_job_as_fal_does(
    fal: FakeFalServer, client: FalClient, where: str
) -> None:
    lora_url = fal.host_file("lora.safetensors", b"weights")
    if where == "expired":
        fal.expire_file(lora_url)
        async with httpx.AsyncClient() as http:
            assert (await http.get(lora_url)).status_code == 404
    else:
        lora_url = "https://lora.invalid/lora.safetensors"
    # Accepted into the queue: the runner fetches the LoRA only when the job runs.
    submission = await client.submit(FLUX_LORA, {"prompt": "x", "loras": [{"path": lora_url, "scale": 1}]})
    await fal.complete(submission.request_id)
    with pytest.raises(RemoteFailed) as caught:
        await client.result(FLUX_LORA, submission.request_id)
    assert caught.value.status_code == 422
    assert caught.value.detail[0]["loc"] == ["body", "loras", 0, "path"]
    assert caught.value.detail[0]["type"] == "file_download_error"


@pytest.mark.parametrize(
    ("error_status", "documented_type"), [(500, "internal_server_error"), (504, "generation_timeout")]
)
async def test_a_documented_server_error_of_the_job_fails_it_at_once(
    fal: FakeFalServer, client: FalClient, error_status: int, documented_type: str
) -> None:
    # FAL's error reference: a detail list of {loc, msg, type, url}, no error_type. It is the
    # job's stored outcome (FAL's server answered it), not an outage to retry.
    submission = await client.submit(FLUX_LORA, {"prompt": "x"})
    await fal.complete(
        submission.request_id,
        error="Internal server error",
        error_status=error_status,
        documented_type=documented_type,
    )
    before = len(fal.requests)
    with pytest.raises(RemoteFailed, match="Internal server error") as caught:
        await client.result(FLUX_LORA, submission.request_id)
    assert caught.value.status_code == error_status
    assert caught.value.detail[0]["type"] == documented_type
    assert len(fal.requests) == before + 1


async def test_an_ingress_outage_on_the_result_is_retried_then_unavailable(
    fal: FakeFalServer, client: FalClient
) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x"})
    await fal.complete(submission.request_id)
    fal.outage(times=2, status=502)
    assert parse_images_result(await client.result(FLUX_LORA, submission.request_id)).images
    fal.outage(times=10, status=503)
    with pytest.raises(RemoteUnavailable):
        await client.result(FLUX_LORA, submission.request_id)


async def test_unknown_request_is_not_found(fal: FakeFalServer, client: FalClient) -> None:
    with pytest.raises(RemoteNotFound):
        await client.status(FLUX_LORA, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(RemoteNotFound):
        await client.result(FLUX_LORA, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(ValueError, match="request id"):
        await client.status(FLUX_LORA, "../../etc")


async def test_cancel(fal: FakeFalServer, client: FalClient) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x"})
    assert await client.cancel(FLUX_LORA, submission.request_id) is CancelOutcome.CANCELLATION_REQUESTED
    with pytest.raises(RemoteFailed):
        await client.result(FLUX_LORA, submission.request_id)
    assert await client.cancel(FLUX_LORA, submission.request_id) is CancelOutcome.ALREADY_COMPLETED
    assert await client.cancel(FLUX_LORA, "00000000-0000-0000-0000-000000000000") is CancelOutcome.NOT_FOUND


# ------------------------------------------------------------------------------- retries


async def test_idempotent_calls_retry_through_an_outage(fal: FakeFalServer, client: FalClient) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x"})
    fal.outage(times=2, status=503)
    assert (await client.status(FLUX_LORA, submission.request_id)).state is RemoteState.IN_QUEUE
    assert len(fal.requests) == 4  # submit + two 503s + the answer

    fal.outage(times=10, status=502)
    with pytest.raises(RemoteUnavailable) as caught:
        await client.status(FLUX_LORA, submission.request_id)
    assert caught.value.status_code == 502 and not caught.value.maybe_submitted


async def test_submit_is_not_retried_when_a_job_may_have_started(
    fal: FakeFalServer, client: FalClient
) -> None:
    fal.outage(times=1, status=503)
    with pytest.raises(RemoteUnavailable) as caught:
        await client.submit(FLUX_LORA, {"prompt": "x"})
    assert caught.value.maybe_submitted
    assert len(fal.requests) == 1


async def test_submit_is_retried_when_nothing_was_queued(fal: FakeFalServer, client: FalClient) -> None:
    fal.outage(times=1, status=429)
    submission = await client.submit(FLUX_LORA, {"prompt": "x"})
    assert [job.request_id for job in fal.submissions] == [submission.request_id]
    assert len(fal.requests) == 2


async def test_unreachable_fal_is_retried_then_unavailable(http: httpx.AsyncClient) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    client = FalClient(key="k", queue_url=f"http://127.0.0.1:{port}", http=http, max_attempts=3, sleep=record)
    with pytest.raises(RemoteUnavailable) as caught:
        await client.submit(FLUX_LORA, {"prompt": "x"})
    assert not caught.value.maybe_submitted
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1] * 2


# ------------------------------------------------------------------------------- webhooks


@dataclass
class Receiver:
    """A tiny app endpoint that verifies FAL webhooks the way the API will."""

    verifier: FalWebhookVerifier
    url: str = ""
    accepted: list[RemoteWebhook] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            webhook = await self.verifier.verify_and_parse(request.headers, body)
        except WebhookRejected as exc:
            self.rejected.append(exc.reason)
            return web.json_response({"detail": "rejected"}, status=401)
        self.accepted.append(webhook)
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver(fal: FakeFalServer, http: httpx.AsyncClient) -> AsyncIterator[Receiver]:
    receiver = Receiver(FalWebhookVerifier(fal.jwks_url, http=http))
    app = web.Application()
    app.router.add_post("/fal/webhook", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    receiver.url = f"http://{host}:{port}/fal/webhook?job=7f1c&x=a%26b"
    yield receiver
    await runner.cleanup()


async def test_genuine_webhook_is_accepted(fal: FakeFalServer, client: FalClient, receiver: Receiver) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x", "num_images": 3}, webhook_url=receiver.url)
    assert fal.submissions[0].webhook_url == receiver.url  # the query survives the round trip
    assert await fal.complete(submission.request_id) == 200
    [webhook] = receiver.accepted
    assert webhook.ok and webhook.request_id == submission.request_id
    assert webhook.payload == await client.result(FLUX_LORA, submission.request_id)
    assert len(parse_images_result(webhook.payload).images) == 3


async def test_failure_webhook_is_accepted_with_its_error(
    fal: FakeFalServer, client: FalClient, receiver: Receiver, archive_url: str
) -> None:
    submission = await client.submit(FAST, {"images_data_url": archive_url}, webhook_url=receiver.url)
    assert await fal.complete(submission.request_id, error="training diverged", error_status=500) == 200
    [webhook] = receiver.accepted
    assert not webhook.ok and webhook.error == "Invalid status code: 500"
    assert webhook.payload == {"detail": "training diverged", "error_type": "runner_server_error"}


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        ({"sign_with": "unknown"}, "signature matches no FAL key"),
        ({"sign_with": None}, "missing header X-Fal-Webhook-Signature"),
        ({"timestamp_offset": -600}, "timestamp is 600 s old"),
        ({"timestamp_offset": 600}, "in the future"),
        ({"tamper_body": True}, "signature matches no FAL key"),
    ],
)
async def test_forged_webhooks_are_rejected(
    fal: FakeFalServer, client: FalClient, receiver: Receiver, forgery: dict[str, object], reason: str
) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x"}, webhook_url=receiver.url)
    await fal.complete(submission.request_id, deliver=False)
    assert await fal.deliver(submission.request_id, **forgery) == 401  # type: ignore[arg-type]
    assert receiver.accepted == []
    assert reason in receiver.rejected[0]


async def test_forgery_flood_fetches_the_jwks_at_most_once_more(
    fal: FakeFalServer, client: FalClient, receiver: Receiver
) -> None:
    submission = await client.submit(FLUX_LORA, {"prompt": "x"}, webhook_url=receiver.url)
    await fal.complete(submission.request_id)
    assert fal.jwks_requests == 1
    assert await fal.deliver(submission.request_id, sign_with="unknown", times=20) == 401
    assert fal.jwks_requests == 1  # the JWKS was fetched moments ago: not again
    assert len(receiver.rejected) == 20


async def test_rotated_key_is_picked_up(fal: FakeFalServer, http: httpx.AsyncClient) -> None:
    verifier = FalWebhookVerifier(fal.jwks_url, http=http, refresh_interval=timedelta(0))
    client = FalClient(key=fal.key, queue_url=fal.base_url, http=http)
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        try:
            await verifier.verify(request.headers, await request.read())
        except WebhookRejected:
            seen.append(401)
            return web.Response(status=401)
        seen.append(200)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        submission = await client.submit(FLUX_LORA, {"prompt": "x"}, webhook_url=f"http://{host}:{port}/hook")
        await fal.complete(submission.request_id)
        assert await fal.deliver(submission.request_id, sign_with="unknown") == 401
        fal.published_keys.append("unknown")  # FAL rotates a new key in
        assert await fal.deliver(submission.request_id, sign_with="unknown") == 200
        assert seen == [200, 401, 200]
    finally:
        await runner.cleanup()


async def test_replayed_delivery_reaches_the_handler_each_time(
    fal: FakeFalServer, client: FalClient, receiver: Receiver
) -> None:
    # Within the time window a replay verifies; the job's status is what makes handling idempotent.
    submission = await client.submit(FLUX_LORA, {"prompt": "x"}, webhook_url=receiver.url)
    await fal.complete(submission.request_id, deliver=False)
    assert await fal.deliver(submission.request_id, times=3) == 200
    assert [w.request_id for w in receiver.accepted] == [submission.request_id] * 3
    assert len({d.body for d in fal.deliveries}) == 1


# ------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("endpoint", "app"),
    [
        ("fal-ai/flux-lora", "fal-ai/flux-lora"),
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux-lora-portrait-trainer", "fal-ai/flux-lora-portrait-trainer"),
        ("workflows/someone/my-flow/run", "workflows/someone/my-flow"),
    ],
)
def test_app_path(endpoint: str, app: str) -> None:
    assert app_path(endpoint) == app


@pytest.mark.parametrize(
    "endpoint", ["flux", "fal-ai/../x", "fal-ai//x", "workflows/someone", "fal-ai/x?y=1"]
)
def test_bad_endpoint_ids_are_refused_before_sending(endpoint: str) -> None:
    with pytest.raises(ValueError):
        app_path(endpoint)


def test_parsers_reject_outputs_without_their_files() -> None:
    with pytest.raises(RemoteMalformedOutput):
        parse_training_result({"config_file": {"url": "https://x/c.json"}})
    with pytest.raises(RemoteMalformedOutput):
        parse_images_result({"images": [], "seed": 1})
    with pytest.raises(RemoteMalformedOutput):
        parse_images_result({"images": [{"width": 1}]})
    # Missing flags and sizes are tolerated: nothing is flagged, sizes are unknown.
    output = parse_images_result({"images": [{"url": "https://x/a.jpg"}], "seed": 196619188014358660})
    assert output.images[0].nsfw is False and output.images[0].width is None
    assert output.seed == 196619188014358660


# ------------------------------------------------------------------------------- storage


async def test_upload_puts_the_file_on_fal_storage(fal: FakeFalServer, http: httpx.AsyncClient) -> None:
    client = FalClient(key=fal.key, queue_url=fal.base_url, rest_url=fal.base_url, http=http, timeout=5.0)
    url = await client.upload(
        b"PK\x03\x04 zip bytes", file_name="training.zip", content_type="application/zip"
    )
    assert url.startswith(f"{fal.base_url}/files/upload-") and url.endswith("training.zip")
    fetched = await http.get(url)
    assert fetched.status_code == 200 and fetched.content == b"PK\x03\x04 zip bytes"
    assert fal.uploads[-1] == ("training.zip", {})  # no expiry asked: FAL's default retention

    # With an expiry: fal_client's object lifecycle preference, on the upload request.
    await client.upload(b"PK", file_name="training.zip", content_type="application/zip", expires_in=14400)
    _, lifecycle = fal.uploads[-1]
    preference = {"expiration_duration_seconds": 14400}
    assert json.loads(lifecycle["X-Fal-Object-Lifecycle-Preference"]) == preference
    assert json.loads(lifecycle["X-Fal-Object-Lifecycle"]) == preference

    wrong = FalClient(key="wrong-key", queue_url=fal.base_url, rest_url=fal.base_url, http=http, timeout=5.0)
    with pytest.raises(RemoteAuthFailed):
        await wrong.upload(b"x", file_name="a.zip", content_type="application/zip")
