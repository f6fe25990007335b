"""The fake FAL's stored jobs and files, and their persistence."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import asdict
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aisha.sandbox._http import LoopbackServer
from aisha.sandbox._state import read_json, write_json_atomically
from aisha.sandbox.exchanges import ExchangeLog
from aisha.sandbox.fal.models import (
    FakeFalJob,
    ImageRenderer,
    JsonDict,
    KeyName,
    WebhookDelivery,
    _Refusal,
    log,
)
from aisha.sandbox.faults import FaultPlan
from aisha.storage.public import unreachable_reason


class FalStore(LoopbackServer):
    """The fake FAL's jobs, files, signing keys and knobs, kept in ``state_dir`` when given."""

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
