"""A fake FAL queue server that the real ``FalClient`` and ``FalWebhookVerifier`` talk to over HTTP.

``async with FakeFalServer() as fal:`` then use ``fal.base_url`` as FAL_QUEUE_URL, ``fal.jwks_url``
as FAL_JWKS_URL and ``fal.key`` as FAL_KEY. It speaks the queue protocol (submit, status, result,
cancel; status/result/cancel under the owner/app part of the endpoint id only, as FAL does),
records every accepted submission in ``fal.submissions``, and when a job ends delivers the webhook
signed exactly as FAL signs it, with an Ed25519 key generated at start and published in its JWKS.
A second key (``"unknown"``) is not published, for forging.

Jobs end when the test says so (``await fal.complete(request_id, output=... | error=...)``) or,
with ``complete_after=<seconds>`` (trainings: ``training_complete_after``), on their own. Default outputs: endpoints whose id contains
"train" answer like the FLUX LoRA trainers (a ``.safetensors`` file and a config file served
under ``/files/``); every other endpoint answers like fal-ai/flux-lora and fal-ai/flux/*:
``num_images`` real PNG images served under ``/files/`` (always PNG, whatever ``output_format``
asks; an image flagged NSFW is black, as FAL's safety checker returns it), ``has_nsfw_concepts``
taken from ``fal.nsfw_flags``, the seed echoed or drawn. An ``image_renderer`` draws the images
instead of the plain colours (the sandbox marks its pictures so).

With ``state_dir`` the jobs, files and signing key are kept there and loaded at start, so a
restarted sandbox still serves its files; ``resume_jobs()`` re-arms the unfinished jobs.

``submit_delay = <seconds>`` holds back the answer to each accepted submission (the job is queued
first), until ``answer_submissions()``: a FAL that hangs, or, past the client's timeout, an answer
lost after FAL took the job.

A training's ``images_data_url`` is downloaded as FAL's runner would, from the URL as given:
loopback, private and single-label hosts (``127.0.0.1``, ``10.0.0.5``, ``minio``, ``localhost``)
are refused unless the test marks them with ``fal.reachable(prefix)`` (the fake's own file host
always is), and the archive must be a zip of images. A failed download or a bad archive fails
the job the way FAL reports it (a 422 ``file_download_error`` / ``image_load_error`` detail, and
the webhook), so the bot's own failure path runs. ``fal.archives`` keeps what each job fetched.
Request bodies of the trainers and the FLUX image endpoints are checked against their documented
inputs (required fields, types, enum values, ranges; the trainers refuse unknown fields).

It runs inside the caller's event loop (``aiohttp.web``); image encoding runs in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import random
import secrets
import struct
import time
import uuid
import zipfile
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox._state import read_json, write_json_atomically
from aisha.sandbox.exchanges import Exchange, ExchangeLog, note_request
from aisha.sandbox.faults import Fault, FaultPlan, never_answer
from aisha.storage.public import unreachable_reason

__all__ = [
    "FakeFalJob",
    "FakeFalServer",
    "WebhookDelivery",
    "png_bytes",
    "sign_webhook",
]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
KeyName = Literal["test", "unknown"]
# (prompt, width, height, seed) -> PNG bytes; runs in a thread.
ImageRenderer = Callable[[str, int, int, int], bytes]

_NAMESPACES = frozenset({"workflows", "comfy"})
_IMAGE_SIZES = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    """A valid PNG of one colour (8-bit RGB), encoded with zlib alone."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 6))
        + chunk(b"IEND", b"")
    )


def sign_webhook(
    key: Ed25519PrivateKey, *, request_id: str, user_id: str, timestamp: int | str, body: bytes
) -> dict[str, str]:
    """The four headers FAL sends with a webhook, signed with ``key``."""
    ts = str(timestamp)
    message = f"{request_id}\n{user_id}\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": ts,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


def _app_path(endpoint: str) -> str:
    parts = endpoint.split("/")
    return "/".join(parts[:3] if parts[0] in _NAMESPACES else parts[:2])


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _colour(seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    return rng.randrange(40, 230), rng.randrange(40, 230), rng.randrange(40, 230)


def _answered(exchange: Exchange, body: JsonDict, *, status: int) -> web.Response:
    """A JSON answer, noted on ``exchange`` as the bot received it."""
    response = web.json_response(body, status=status)
    exchange.answered(response)
    return response


def _field_error(field_name: str, msg: str, kind: str = "value_error") -> JsonDict:
    return {"loc": ["body", field_name], "msg": msg, "type": kind}


def _documented_error(loc: list[Any], msg: str, kind: str) -> JsonDict:
    """One item of FAL's documented error ``detail`` list (docs.fal.ai/errors)."""
    return {"loc": loc, "msg": msg, "type": kind, "url": f"https://docs.fal.ai/errors/#{kind}"}


# The trainers' documented inputs (fal.ai model pages): name -> accepted JSON types.
_TRAINER_INPUTS: dict[str, dict[str, tuple[type, ...]]] = {
    "fal-ai/flux-lora-portrait-trainer": {
        "images_data_url": (str,),
        "trigger_phrase": (str,),
        "learning_rate": (int, float),
        "steps": (int,),
        "multiresolution_training": (bool,),
        "subject_crop": (bool,),
        "create_masks": (bool,),
        "data_archive_format": (str, type(None)),
        "resume_from_checkpoint": (str,),
    },
    "fal-ai/flux-lora-fast-training": {
        "images_data_url": (str,),
        "trigger_word": (str,),
        "create_masks": (bool,),
        "steps": (int,),
        "is_style": (bool,),
        "is_input_format_already_preprocessed": (bool,),
        "data_archive_format": (str, type(None)),
    },
}
_ARCHIVE_FORMATS = frozenset({"zip"})
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG; WEBP checked apart
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_DOWNLOAD_FAILED = "Failed to download the file. Please check if the URL is accessible."


def _of_type(value: Any, kinds: tuple[type, ...]) -> bool:
    # JSON true is not a number, and 1 is not a boolean.
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _archive_problem(data: bytes) -> str | None:
    """Why ``data`` is not a zip of images FAL could train on, or None."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        corrupt = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):
        return "The archive is not a valid zip file."
    if corrupt is not None:
        return f"The archive is corrupt ({corrupt})."
    images = 0
    for info in archive.infolist():
        name = info.filename.lower()
        if info.is_dir() or name.startswith("__macosx/") or name.endswith(".txt"):
            continue  # captions may sit beside the images
        head = archive.read(info)[:12]
        is_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
        if not name.endswith(_IMAGE_SUFFIXES) or not (head.startswith(_IMAGE_MAGIC) or is_webp):
            return f"Failed to load the image {info.filename!r}: not a supported image."
        images += 1
    if images == 0:
        return "The archive contains no images."
    return None


@dataclass
class FakeFalJob:
    """One accepted submission and what became of it."""

    request_id: str
    endpoint: str
    app: str
    payload: JsonDict
    webhook_url: str | None
    state: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED
    output: JsonDict | None = None
    error: str | None = None
    error_status: int | None = None
    error_type: str | None = None
    # FAL's documented error shape (a list of {loc, msg, type, ...}), when the failure has one.
    error_detail: list[JsonDict] | None = None
    cancel_requested: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    completed_at: float | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class WebhookDelivery:
    request_id: str
    url: str
    status: int  # the receiver's HTTP status; 0 when it could not be reached
    body: bytes
    headers: dict[str, str]
    signed_with: str | None


@dataclass(frozen=True)
class _Refusal:
    status: int
    detail: Any


class FakeFalServer(LoopbackServer):
    """An in-process FAL queue (plus JWKS and file host) for one API key."""

    def __init__(
        self,
        *,
        key: str = "fake-fal-key",
        user_id: str = "fake-fal-user",
        host: str = "127.0.0.1",
        port: int = 0,
        complete_after: float | None = None,
        training_complete_after: float | None = None,
        image_renderer: ImageRenderer | None = None,
        webhook_timeout: float = 10.0,
        state_dir: Path | None = None,
    ) -> None:
        self.key = key
        self.user_id = user_id
        super().__init__(host=host, port=port)
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._webhook_timeout = webhook_timeout
        self._signing_keys: dict[str, Ed25519PrivateKey] = {
            "test": Ed25519PrivateKey.generate(),
            "unknown": Ed25519PrivateKey.generate(),
        }
        self._refusals: deque[_Refusal] = deque()
        self._outages: deque[int] = deque()
        self.faults = FaultPlan("fal", by_fragment=True)  # fail_nth: the n-th matching request fails
        self._submitted = asyncio.Condition()
        self._image_renderer = image_renderer
        self._state_dir = state_dir
        self._restored: list[FakeFalJob] = []  # loaded from state_dir, not yet re-armed
        self._held_answers: list[asyncio.Event] = []

        # Knobs a test may turn at any time.
        self.complete_after = complete_after  # seconds until a job ends by itself; None: only on complete()
        self.training_complete_after = training_complete_after  # the same for trainings; None: complete_after
        self.nsfw_flags: list[bool] = []  # has_nsfw_concepts of the next image outputs (missing: False)
        self.published_keys: list[str] = ["test"]  # key names served in the JWKS (append "unknown" to rotate)
        # Seconds an accepted submission's answer is held back (the job is queued first): a slow
        # FAL, or with more than the client's timeout an answer lost after FAL took the job.
        self.submit_delay = 0.0

        # What happened, for assertions.
        self.jobs: dict[str, FakeFalJob] = {}
        self.submissions: list[FakeFalJob] = []
        self.deliveries: list[WebhookDelivery] = []
        self.files: dict[str, tuple[bytes, str]] = {}
        self.archives: dict[str, list[str]] = {}  # request id -> file names of the archive it fetched
        self.uploads: list[tuple[str, dict[str, str]]] = []  # (file name, lifecycle headers) per upload
        self._reachable: list[str] = []  # URL prefixes FAL may fetch although local (tests, sandbox)
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._pending_uploads: dict[str, str] = {}  # upload name -> content type
        self.jwks_requests = 0
        self.requests: list[tuple[str, str]] = []  # (method, path?query) of every queue API call
        self.exchanges = ExchangeLog()  # the same with their bodies and answers, for the sandbox panel
        self.errors: list[str] = []  # unexpected exceptions inside the fake; should stay empty

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._state_dir is not None:
            self._load_state(self._state_dir)
        app = web.Application(middlewares=[self._guard], client_max_size=32 * 1024 * 1024)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_post("/storage/upload/initiate", self._initiate_upload)
        app.router.add_put("/uploads/{name}", self._receive_upload)
        app.router.add_get("/{app:.+}/requests/{request_id}/status", self._status)
        app.router.add_put("/{app:.+}/requests/{request_id}/cancel", self._cancel)
        app.router.add_get("/{app:.+}/requests/{request_id}", self._result)
        app.router.add_post("/{endpoint:.+}", self._submit)
        await self._listen(app)

    async def stop(self) -> None:
        if self._runner is None:
            return
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.close()
            self._client = None
        await self._close()

    @property
    def base_url(self) -> str:
        """``http://host:port``: the value for FAL_QUEUE_URL."""
        return self._root_url()

    @property
    def jwks_url(self) -> str:
        """The value for FAL_JWKS_URL."""
        return f"{self.base_url}/.well-known/jwks.json"

    def private_key(self, name: KeyName = "test") -> Ed25519PrivateKey:
        return self._signing_keys[name]

    # ------------------------------------------------------------------------------ test controls

    def reachable(self, *prefixes: str) -> None:
        """Let FAL fetch URLs starting with these prefixes although their hosts are local (this
        machine stands in for the internet: ``fal.reachable(settings.public_base_url)``)."""
        self._reachable.extend(p.rstrip("/") + "/" for p in prefixes)

    def serve_file(self, name: str, data: bytes, content_type: str = "application/zip") -> str:
        """Host a file on the fake's CDN (always reachable); its URL."""
        self._put_file(name, data, content_type)
        return f"{self.base_url}/files/{name}"

    def can_reach(self, url: str) -> bool:
        if url.startswith(self.base_url + "/") or any(url.startswith(p) for p in self._reachable):
            return True
        return unreachable_reason(url) is None

    def refuse_next(self, status: int = 422, detail: Any = None) -> None:
        """Answer the next submission with ``status`` and ``{"detail": detail}``; nothing is queued."""
        if detail is None:
            detail = [_field_error("prompt", "refused by the fake FAL server")]
        self._refusals.append(_Refusal(status, detail))

    def outage(self, times: int = 1, status: int = 503) -> None:
        """Answer the next ``times`` queue API calls (any kind) with an ingress error page."""
        self._outages.extend([status] * times)

    def answer_submissions(self) -> None:
        """Send the answers held back by ``submit_delay`` now."""
        for waiting in self._held_answers:
            waiting.set()
        self._held_answers.clear()

    def host_file(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Put a file on the fake CDN (as if FAL made it earlier); returns its URL."""
        self._put_file(name, data, content_type)
        return f"{self.base_url}/files/{name}"

    def expire_file(self, url: str) -> None:
        """FAL's media expiry: the CDN file at ``url`` answers 404 from now on."""
        name = self._own_file(url)
        if name is None or name not in self.files:
            raise KeyError(f"no fake FAL file at {url}")
        del self.files[name]
        self._save_state()

    def start_job(self, request_id: str) -> None:
        """Move a queued job to IN_PROGRESS."""
        job = self._job(request_id)
        if job.state == "IN_QUEUE":
            job.state = "IN_PROGRESS"
            self._save_state()

    async def complete(
        self,
        request_id: str,
        *,
        output: JsonDict | None = None,
        error: str | None = None,
        error_status: int = 422,
        error_type: str | None = None,
        documented_type: str | None = None,
        nsfw: list[bool] | None = None,
        deliver: bool = True,
    ) -> int | None:
        """End a job: with ``output`` (or the endpoint's default output) or, given ``error``, failed.

        A failure with a 4xx status looks like a model's validation error (``detail`` list), with
        a 5xx like a request error (``detail`` text and ``error_type``). ``documented_type``
        (e.g. ``"internal_server_error"``, ``"generation_timeout"``) answers in the shape FAL's
        error reference documents instead: a ``detail`` list of ``{loc, msg, type, url}`` and no
        ``error_type``. A generation whose LoRA can't be downloaded fails as FAL fails it
        (422 ``file_download_error``). When the job has a webhook and ``deliver`` is true the
        signed webhook is sent; its HTTP status is returned.
        """
        job = self._job(request_id)
        await self._fetched(job)  # the runner reads its input first
        if job.state == "COMPLETED":
            raise ValueError(f"job {request_id} has already completed ({job.error or 'succeeded'})")
        if error is None and output is None and (bad := await self._unreachable_lora(job)) is not None:
            error, error_status, documented_type = "File download error", 422, "file_download_error"
            job.error_detail = [_documented_error(["body", "loras", bad, "path"], error, documented_type)]
        elif documented_type is not None:
            job.error_detail = [_documented_error(["body"], error or documented_type, documented_type)]
        if error is not None:
            job.error = error
            job.error_status = error_status
            if job.error_detail is None:
                job.error_type = error_type or ("runner_server_error" if error_status >= 500 else None)
        else:
            job.output = output if output is not None else await self._default_output(job, nsfw)
        job.state = "COMPLETED"
        job.completed_at = time.monotonic()
        self._save_state()
        if deliver and job.webhook_url:
            return await self.deliver(request_id)
        return None

    async def deliver(
        self,
        request_id: str,
        *,
        sign_with: KeyName | None = "test",
        timestamp_offset: int = 0,
        tamper_body: bool = False,
        times: int = 1,
        url: str | None = None,
    ) -> int:
        """POST the job's webhook (again), signed like FAL or forged; returns the last HTTP status.

        ``sign_with=None`` sends no signature header; ``"unknown"`` signs with a key missing from
        the JWKS; ``timestamp_offset`` shifts the signed timestamp; ``tamper_body`` changes the
        body after signing; ``times`` sends the identical request repeatedly (a replay).
        """
        job = self._job(request_id)
        if job.state != "COMPLETED":
            raise ValueError(f"job {request_id} has not completed")
        target = url or job.webhook_url
        if target is None:
            raise ValueError(f"job {request_id} was submitted without a webhook")
        body = self.webhook_body(request_id)
        headers = {"Content-Type": "application/json"}
        if sign_with is not None:
            headers |= sign_webhook(
                self._signing_keys[sign_with],
                request_id=request_id,
                user_id=self.user_id,
                timestamp=int(time.time()) + timestamp_offset,
                body=body,
            )
        else:
            headers |= {
                "X-Fal-Webhook-Request-Id": request_id,
                "X-Fal-Webhook-User-Id": self.user_id,
                "X-Fal-Webhook-Timestamp": str(int(time.time()) + timestamp_offset),
            }
        if tamper_body:
            data = json.loads(body)
            data["status"] = "ERROR" if data["status"] == "OK" else "OK"
            body = json.dumps(data).encode()
        status = 0
        for _ in range(times):
            status = await self._post_webhook(target, body, headers)
            self.deliveries.append(
                WebhookDelivery(request_id, target, status, body, dict(headers), sign_with)
            )
        return status

    def webhook_body(self, request_id: str) -> bytes:
        """The JSON FAL posts when the job ends (the same bytes every time)."""
        job = self._job(request_id)
        data: JsonDict = {"request_id": job.request_id, "gateway_request_id": job.request_id}
        if job.failed:
            data |= {
                "status": "ERROR",
                "error": f"Invalid status code: {job.error_status}",
                "payload": self._error_body(job),
            }
        else:
            data |= {"status": "OK", "payload": job.output, "error": None}
        return json.dumps(data).encode()

    async def wait_submissions(self, count: int) -> list[FakeFalJob]:
        """Wait until at least ``count`` submissions were accepted; return them all.

        Bound it with ``asyncio.timeout`` in the test.
        """
        async with self._submitted:
            await self._submitted.wait_for(lambda: len(self.submissions) >= count)
        return list(self.submissions)

    def fail_nth(self, path_fragment: str, fault: Fault, n: int = 1) -> None:
        """The ``n``-th request from now whose ``"METHOD /path"`` contains ``path_fragment``
        fails with ``fault`` (e.g. ``"POST /fal-ai/flux-lora-portrait-trainer"``, ``"/files/"``)."""
        self.faults.add(path_fragment, fault, n)

    # ------------------------------------------------------------------------------ HTTP: queue

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # File downloads and upload URLs are capabilities of their own, like FAL's CDN links.
        public = request.path == "/.well-known/jwks.json" or request.path.startswith(("/files/", "/uploads/"))
        fault = self.faults.take(f"{request.method} {request.path}")
        if fault is not None:
            refused = self.exchanges.add_request(request, summary=f"[{fault.value}]")
            if fault.status is None:
                return await never_answer(request, fault)
            return _answered(refused, {"detail": f"injected fault: {fault.value}"}, status=fault.status)
        exchange: Exchange | None = None
        if not public:
            self.requests.append((request.method, request.path_qs))
            exchange = self.exchanges.add_request(request)
            if self._outages:
                status = self._outages.popleft()
                page = (
                    f"<html><body><center><h1>{status}</h1></center><hr><center>nginx</center></body></html>"
                )
                outage = web.Response(status=status, text=page, content_type="text/html")
                exchange.answered(outage)
                return outage
            if request.headers.get("Authorization") != f"Key {self.key}":
                return _answered(exchange, {"detail": "Invalid or missing FAL key"}, status=401)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exchange is not None:
                exchange.status, exchange.response = exc.status, exc.text
            raise
        except Exception as exc:
            self.errors.append(f"{request.method} {request.path}: {type(exc).__name__}: {exc}")
            log.exception("fake FAL server error")
            response = web.json_response({"detail": "internal error in the fake"}, status=500)
        if exchange is not None:
            exchange.answered(response)
        return response

    async def _submit(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"].strip("/")
        if self._refusals:
            refusal = self._refusals.popleft()
            return web.json_response({"detail": refusal.detail}, status=refusal.status)
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        note_request(request, payload)
        if not isinstance(payload, dict):
            return web.json_response({"detail": [_field_error("body", "must be a JSON object")]}, status=422)
        problems = self._validate(endpoint, payload)
        if problems:
            return web.json_response({"detail": problems}, status=422)

        request_id = str(uuid.uuid4())
        job = FakeFalJob(
            request_id=request_id,
            endpoint=endpoint,
            app=_app_path(endpoint),
            payload=payload,
            webhook_url=request.query.get("fal_webhook"),
        )
        self.jobs[request_id] = job
        self._save_state()
        async with self._submitted:
            self.submissions.append(job)
            self._submitted.notify_all()
        if self._is_trainer(endpoint):
            fetch = asyncio.create_task(self._fetch_archive(job))
            self._fetches[request_id] = fetch
            self._tasks.add(fetch)
            fetch.add_done_callback(self._tasks.discard)
        self._arm(job)
        if self.submit_delay > 0:
            answer = asyncio.Event()
            self._held_answers.append(answer)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answer.wait(), self.submit_delay)
        urls = self._urls(job)
        return web.json_response(
            {
                "status": "IN_QUEUE",
                "request_id": request_id,
                "gateway_request_id": request_id,
                "queue_position": self._queue_position(job),
                **urls,
            }
        )

    async def _status(self, request: web.Request) -> web.Response:
        job = self._lookup(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        with_logs = request.query.get("logs") in ("1", "true", "True")
        logs = (
            [{"message": f"fake {job.endpoint} running", "level": "INFO", "source": "user"}]
            if with_logs
            else None
        )
        body: JsonDict = {"status": job.state, "request_id": job.request_id, **self._urls(job)}
        if job.state == "IN_QUEUE":
            body["queue_position"] = self._queue_position(job)
            return web.json_response(body, status=202)
        body["logs"] = logs
        if job.state == "IN_PROGRESS":
            return web.json_response(body, status=202)
        elapsed = (job.completed_at or job.submitted_at) - job.submitted_at
        body["metrics"] = {"inference_time": round(elapsed, 3)}
        if job.failed:
            body["error"] = job.error
            body["error_type"] = job.error_type
        return web.json_response(body, status=200)

    async def _result(self, request: web.Request) -> web.Response:
        job = self._lookup(request)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if job.state != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        headers = {"X-Fal-Request-Id": job.request_id}
        if job.failed:
            if job.error_type:
                headers["X-Fal-Error-Type"] = job.error_type
            return web.json_response(self._error_body(job), status=job.error_status or 500, headers=headers)
        return web.json_response(job.output, headers=headers)

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._lookup(request)
        if job is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if job.state == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job.cancel_requested = True
        if job.state == "IN_QUEUE":
            # Removed from the queue: it ends failed, without a webhook.
            job.error, job.error_status, job.error_type = "Request was cancelled", 499, "client_cancelled"
            job.state = "COMPLETED"
            job.completed_at = time.monotonic()
        self._save_state()
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    # ------------------------------------------------------------------------------ HTTP: public

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        keys = [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64url(self._signing_keys[name].public_key().public_bytes_raw()),
                "kid": name,
                "use": "sig",
                "alg": "EdDSA",
            }
            for name in self.published_keys
        ]
        return web.json_response({"keys": keys})

    async def _initiate_upload(self, request: web.Request) -> web.Response:
        """FAL's storage API (the same host plays rest.fal.ai): an upload URL and the file's URL."""
        if request.headers.get("Authorization") != f"Key {self.key}":
            return web.json_response({"detail": "Unauthorized"}, status=401)
        body = await request.json()
        note_request(request, body)
        file_name = str(body.get("file_name") or "upload.bin")
        lifecycle = {
            k: v for k, v in request.headers.items() if k.lower().startswith("x-fal-object-lifecycle")
        }
        self.uploads.append((file_name, lifecycle))
        name = f"upload-{secrets.token_hex(6)}-{file_name.replace('/', '_')}"
        self._pending_uploads[name] = str(body.get("content_type") or "application/octet-stream")
        self._save_state()
        return web.json_response(
            {"upload_url": f"{self.base_url}/uploads/{name}", "file_url": f"{self.base_url}/files/{name}"}
        )

    async def _receive_upload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = self._pending_uploads.pop(name, None)
        if content_type is None:
            return web.json_response({"detail": "Unknown upload"}, status=404)
        self._put_file(name, await request.read(), content_type)
        return web.Response(status=200)

    async def _file(self, request: web.Request) -> web.Response:
        stored = self.files.get(request.match_info["name"])
        if stored is None:
            return web.json_response({"detail": "File not found"}, status=404)
        data, content_type = stored
        return web.Response(body=data, content_type=content_type)

    # ------------------------------------------------------------------------------ internals

    def _job(self, request_id: str) -> FakeFalJob:
        try:
            return self.jobs[request_id]
        except KeyError:
            raise KeyError(f"no fake FAL job {request_id}") from None

    def _lookup(self, request: web.Request) -> FakeFalJob | None:
        job = self.jobs.get(request.match_info["request_id"])
        # FAL addresses requests by owner/app only; a URL with the endpoint's sub-path is wrong.
        if job is None or job.app != request.match_info["app"].strip("/"):
            return None
        return job

    def _urls(self, job: FakeFalJob) -> dict[str, str]:
        base = f"{self.base_url}/{job.app}/requests/{job.request_id}"
        return {"response_url": base, "status_url": base + "/status", "cancel_url": base + "/cancel"}

    def _queue_position(self, job: FakeFalJob) -> int:
        queued = [j for j in self.submissions if j.state == "IN_QUEUE"]
        return queued.index(job) if job in queued else 0

    @staticmethod
    def _error_body(job: FakeFalJob) -> JsonDict:
        if job.error_detail is not None:
            return {"detail": job.error_detail}
        if job.error_type:
            return {"detail": job.error, "error_type": job.error_type}
        return {"detail": [{"loc": ["body"], "msg": job.error, "type": "value_error"}]}

    def _own_file(self, url: str) -> str | None:
        prefix = f"{self.base_url}/files/"
        return url[len(prefix) :] if url.startswith(prefix) else None

    async def _unreachable_lora(self, job: FakeFalJob) -> int | None:
        """The index of the first LoRA FAL could not download, as its runner does before it starts."""
        loras = job.payload.get("loras") if not self._is_trainer(job.endpoint) else None
        for index, lora in enumerate(loras if isinstance(loras, list) else []):
            url = str(lora.get("path", "")) if isinstance(lora, dict) else ""
            name = self._own_file(url)
            if name is not None:
                if name not in self.files:
                    return index
                continue
            if not await self._answers(url):
                return index
        return None

    def _triggers(self, payload: JsonDict) -> set[str]:
        """The trigger words of the LoRAs a generation uses that this fake trained."""
        triggers = set()
        for lora in payload.get("loras") or []:
            name = self._own_file(str(lora.get("path", ""))) if isinstance(lora, dict) else None
            data = self.files[name][0] if name in self.files else b""
            try:
                size = struct.unpack("<Q", data[:8])[0]
                triggers.add(str(json.loads(data[8 : 8 + size])["__metadata__"]["trigger"]))
            except (struct.error, ValueError, KeyError, TypeError):
                continue  # not a LoRA of ours
        return triggers - {""}

    async def _answers(self, url: str) -> bool:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._webhook_timeout))
        try:
            async with self._client.head(url, allow_redirects=True) as response:
                return response.status < 400
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    @staticmethod
    def _is_trainer(endpoint: str) -> bool:
        return "train" in endpoint

    def _validate(self, endpoint: str, payload: JsonDict) -> list[JsonDict]:
        """The checks FAL's input schemas make (422 with field errors)."""
        if self._is_trainer(endpoint):
            return self._validate_training(endpoint, payload)
        problems: list[JsonDict] = []
        if not isinstance(payload.get("prompt"), str) or not payload["prompt"].strip():
            problems.append(_field_error("prompt", "field required", "value_error.missing"))
        num = payload.get("num_images", 1)
        if not _of_type(num, (int,)) or not 1 <= num <= 4:
            problems.append(_field_error("num_images", "ensure this value is between 1 and 4"))
        steps = payload.get("num_inference_steps", 28)
        if not _of_type(steps, (int,)) or not 1 <= steps <= 50:
            problems.append(_field_error("num_inference_steps", "ensure this value is between 1 and 50"))
        guidance = payload.get("guidance_scale", 3.5)
        if not _of_type(guidance, (int, float)) or not 0 <= guidance <= 35:
            problems.append(_field_error("guidance_scale", "ensure this value is between 0 and 35"))
        if "seed" in payload and not _of_type(payload["seed"], (int, type(None))):
            problems.append(_field_error("seed", "value is not a valid integer", "type_error.integer"))
        for flag in ("enable_safety_checker", "sync_mode"):
            if flag in payload and not _of_type(payload[flag], (bool,)):
                problems.append(
                    _field_error(flag, "value could not be parsed to a boolean", "type_error.bool")
                )
        if payload.get("output_format", "jpeg") not in ("jpeg", "png"):
            problems.append(
                _field_error("output_format", "value is not a valid enumeration member: jpeg, png")
            )
        loras = payload.get("loras", [])
        if not isinstance(loras, list) or not all(
            isinstance(x, dict)
            and isinstance(x.get("path"), str)
            and _of_type(x.get("scale", 1), (int, float))
            for x in loras
        ):
            problems.append(_field_error("loras", "each LoRA needs a path and a numeric scale"))
        if self._image_size(payload.get("image_size", "landscape_4_3")) is None:
            problems.append(_field_error("image_size", "unknown image size"))
        return problems

    @staticmethod
    def _validate_training(endpoint: str, payload: JsonDict) -> list[JsonDict]:
        problems: list[JsonDict] = []
        url = payload.get("images_data_url")
        if not isinstance(url, str) or not url:
            problems.append(_field_error("images_data_url", "field required", "value_error.missing"))
        schema = _TRAINER_INPUTS.get(endpoint)
        if schema is None:  # another trainer: only what every one of them needs
            return problems
        for name, value in payload.items():
            kinds = schema.get(name)
            if kinds is None:
                problems.append(_field_error(name, "extra fields not permitted", "value_error.extra"))
            elif not _of_type(value, kinds):
                problems.append(_field_error(name, f"value is not a valid {kinds[0].__name__}", "type_error"))
        archive_format = payload.get("data_archive_format")
        if archive_format is not None and archive_format not in _ARCHIVE_FORMATS:
            problems.append(_field_error("data_archive_format", "unsupported archive format: zip"))
        steps = payload.get("steps", 1)
        if _of_type(steps, (int,)) and not 1 <= steps <= 10000:
            problems.append(_field_error("steps", "ensure this value is between 1 and 10000"))
        return problems

    async def _fetched(self, job: FakeFalJob) -> None:
        fetch = self._fetches.get(job.request_id)
        if fetch is not None and asyncio.current_task() is not fetch:
            await asyncio.shield(fetch)

    async def _fetch_archive(self, job: FakeFalJob) -> None:
        try:
            await self._run_fetch(job)
        except Exception as exc:
            self.errors.append(f"archive fetch: {type(exc).__name__}: {exc}")
            log.exception("fake FAL archive fetch failed")

    async def _run_fetch(self, job: FakeFalJob) -> None:
        """Download ``images_data_url`` as FAL's runner does; a failure ends the job failed."""
        url = job.payload["images_data_url"]
        problem: tuple[str, str] | None = None
        if not self.can_reach(url):
            problem = ("file_download_error", _DOWNLOAD_FAILED)
        else:
            try:
                if self._client is None:
                    self._client = aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=self._webhook_timeout)
                    )
                async with self._client.get(url) as response:
                    data = await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok, data = False, b""
            if not ok:
                problem = ("file_download_error", _DOWNLOAD_FAILED)
            else:
                bad = _archive_problem(data)
                if bad is not None:
                    problem = ("image_load_error", bad)
                else:
                    self.archives[job.request_id] = zipfile.ZipFile(io.BytesIO(data)).namelist()
        # Not a call of the bot's: the trainer fetching the photos the bot pointed it at.
        self.exchanges.add("GET", f"[runner] images_data_url {'failed' if problem else 'ok'}", request=url)
        if problem is None or job.state == "COMPLETED":
            return
        kind, message = problem
        job.error_detail = [{"loc": ["body", "images_data_url"], "msg": message, "type": kind, "input": url}]
        await self.complete(job.request_id, error=message, error_status=422)

    @staticmethod
    def _image_size(value: Any) -> tuple[int, int] | None:
        if isinstance(value, str):
            return _IMAGE_SIZES.get(value)
        if isinstance(value, dict):
            width, height = value.get("width", 512), value.get("height", 512)
            if (
                isinstance(width, int)
                and isinstance(height, int)
                and 1 <= width <= 4096
                and 1 <= height <= 4096
            ):
                return width, height
        return None

    async def _default_output(self, job: FakeFalJob, nsfw: list[bool] | None) -> JsonDict:
        file_id = uuid.uuid4().hex[:12]
        if self._is_trainer(job.endpoint):
            lora_name, config_name = f"{file_id}.safetensors", f"{file_id}.json"
            # The trigger rides in the metadata, so a picture drawn with this LoRA (or a copy of
            # it republished elsewhere) shows the subject, not the token.
            trigger = job.payload.get("trigger_phrase") or job.payload.get("trigger_word") or ""
            header = json.dumps({"__metadata__": {"format": "pt", "trigger": trigger}}).encode()
            header += b" " * (-len(header) % 8)
            lora = struct.pack("<Q", len(header)) + header
            config = json.dumps({"input": job.payload}).encode()
            self._put_file(lora_name, lora, "application/octet-stream")
            self._put_file(config_name, config, "application/json")
            return {
                "diffusers_lora_file": {
                    "url": f"{self.base_url}/files/{lora_name}",
                    "content_type": "application/octet-stream",
                    "file_name": "pytorch_lora_weights.safetensors",
                    "file_size": len(lora),
                },
                "config_file": {
                    "url": f"{self.base_url}/files/{config_name}",
                    "content_type": "application/json",
                    "file_name": "config.json",
                    "file_size": len(config),
                },
            }

        payload = job.payload
        count = payload.get("num_images", 1)
        width, height = self._image_size(payload.get("image_size", "landscape_4_3")) or (1024, 768)
        seed = payload.get("seed")
        if not isinstance(seed, int):
            seed = random.randrange(2**31)
        flags = list(nsfw if nsfw is not None else self.nsfw_flags)[:count]
        flags += [False] * (count - len(flags))
        checker_on = payload.get("enable_safety_checker", True) is not False
        blacked = [flag and checker_on for flag in flags]
        prompt = str(payload.get("prompt", ""))
        drawn = " ".join(word for word in prompt.split() if word.strip(",.") not in self._triggers(payload))
        encoded = await asyncio.to_thread(
            lambda: [self._render(drawn, width, height, seed + i, black) for i, black in enumerate(blacked)]
        )
        images = []
        for index, data in enumerate(encoded):
            name = f"{file_id}-{index}.png"
            self._put_file(name, data, "image/png")
            images.append(
                {
                    "url": f"{self.base_url}/files/{name}",
                    "width": width,
                    "height": height,
                    "content_type": "image/png",
                    "file_name": name,
                    "file_size": len(data),
                }
            )
        return {
            "images": images,
            "timings": {"inference": 0.01},
            "seed": seed,
            "has_nsfw_concepts": flags,
            "prompt": payload.get("prompt", ""),
        }

    def _render(self, prompt: str, width: int, height: int, seed: int, black: bool) -> bytes:
        if black:  # what FAL's safety checker returns
            return png_bytes(width, height, (0, 0, 0))
        if self._image_renderer is not None:
            return self._image_renderer(prompt, width, height, seed)
        return png_bytes(width, height, _colour(seed))

    def _arm(self, job: FakeFalJob) -> None:
        """Let the job end by itself if auto-completion is on; a restored job keeps its age."""
        delay = self.complete_after
        if self._is_trainer(job.endpoint) and self.training_complete_after is not None:
            delay = self.training_complete_after
        if delay is not None and job.state != "COMPLETED":
            age = time.monotonic() - job.submitted_at
            self._spawn(self._auto_complete(job, max(0.0, delay - age)))

    async def _auto_complete(self, job: FakeFalJob, delay: float) -> None:
        await asyncio.sleep(delay / 2)
        if job.state == "IN_QUEUE":
            job.state = "IN_PROGRESS"
            self._save_state()
        await asyncio.sleep(delay / 2)
        await self._fetched(job)
        if job.state != "COMPLETED":
            await self.complete(job.request_id)

    # ------------------------------------------------------------------------------ persistence

    def resume_jobs(self) -> None:
        """Re-arm the unfinished jobs loaded from ``state_dir``; call it once webhooks can be taken."""
        restored, self._restored = self._restored, []
        for job in restored:
            self._arm(job)

    def _put_file(self, name: str, data: bytes, content_type: str) -> None:
        self.files[name] = (data, content_type)
        if self._state_dir is not None:
            path = self._state_dir / "files" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self._save_state()

    def _save_state(self) -> None:
        if self._state_dir is None:
            return
        now_wall, now_mono = time.time(), time.monotonic()

        def job_state(job: FakeFalJob) -> JsonDict:
            # Monotonic times mean nothing to the next process: keep wall-clock times instead.
            data = asdict(job)
            data["submitted_at"] = now_wall - (now_mono - job.submitted_at)
            data["completed_at"] = (
                None if job.completed_at is None else now_wall - (now_mono - job.completed_at)
            )
            return data

        key = self._signing_keys["test"].private_bytes_raw().hex()
        write_json_atomically(
            self._state_dir / "state.json",
            {
                "signing_key": key,
                "jobs": [job_state(job) for job in self.jobs.values()],
                "files": {name: content_type for name, (_, content_type) in self.files.items()},
                "pending_uploads": self._pending_uploads,
            },
        )

    def _load_state(self, state_dir: Path) -> None:
        state = read_json(state_dir / "state.json")
        if state is None:
            return
        self._signing_keys["test"] = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(state["signing_key"]))
        now_wall, now_mono = time.time(), time.monotonic()
        for data in state["jobs"]:
            data["submitted_at"] = now_mono - (now_wall - data["submitted_at"])
            if data["completed_at"] is not None:
                data["completed_at"] = now_mono - (now_wall - data["completed_at"])
            job = FakeFalJob(**data)
            self.jobs[job.request_id] = job
            self._restored.append(job)
        self.files = {
            name: ((state_dir / "files" / name).read_bytes(), content_type)
            for name, content_type in state["files"].items()
        }
        self._pending_uploads = dict(state["pending_uploads"])

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append(f"background: {type(exc).__name__}: {exc}")
                log.exception("fake FAL background task failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_webhook(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._webhook_timeout))
        try:
            async with self._client.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("fake FAL webhook to %s failed: %s", url, type(exc).__name__)
            return 0
