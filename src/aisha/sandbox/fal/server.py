"""The fake FAL queue server: the public facade and its HTTP handlers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aisha.sandbox.exchanges import Exchange, note_request
from aisha.sandbox.fal.jobs import FalJobs
from aisha.sandbox.fal.models import (
    FakeFalJob,
    JsonDict,
    _answered,
    _app_path,
    _b64url,
    _field_error,
    _Refusal,
    log,
)
from aisha.sandbox.faults import Fault, never_answer


class FakeFalServer(FalJobs):
    """An in-process FAL queue (plus JWKS and file host) for one API key."""

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
