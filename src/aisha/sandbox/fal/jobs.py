"""The fake FAL's jobs: fetching inputs, producing outputs, delivering webhooks."""

from __future__ import annotations

import asyncio
import io
import json
import random
import struct
import time
import uuid
import zipfile

import aiohttp

from aisha.sandbox.fal.models import (
    _DOWNLOAD_FAILED,
    FakeFalJob,
    JsonDict,
    KeyName,
    WebhookDelivery,
    _archive_problem,
    _colour,
    _documented_error,
    log,
    png_bytes,
    sign_webhook,
)
from aisha.sandbox.fal.validation import FalValidation


class FalJobs(FalValidation):
    """Jobs running and ending: the runner's fetches, default outputs, webhooks."""

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

    def resume_jobs(self) -> None:
        """Re-arm the unfinished jobs loaded from ``state_dir``; call it once webhooks can be taken."""
        restored, self._restored = self._restored, []
        for job in restored:
            self._arm(job)

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
