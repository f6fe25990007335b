"""A client for FAL's queue REST API: submit a job, read its status and result, cancel it.

The client is generic (an endpoint id and a JSON payload in, dicts out) so avatar training and
image generation can share it through their own Protocols. Beside it: `fal_storage.py` (files on
FAL's CDN), `fal_results.py` (the trainers' and FLUX endpoints' outputs as typed values),
`fal_http.py` (reading FAL's answers) and `fal_webhook.py` (verifying FAL's signed webhooks).

Protocol (https://fal.ai/docs/api-reference/inference-api, https://docs.fal.ai/model-endpoints/queue):

- submit: ``POST {queue}/{endpoint_id}[?fal_webhook=<url>]`` with the input as JSON and
  ``Authorization: Key <FAL_KEY>``; the answer carries ``request_id``, ``status_url``,
  ``response_url``, ``cancel_url``.
- status / result / cancel use only the owner and the app of the endpoint id (``fal-ai/flux/dev``
  → ``fal-ai/flux``): ``GET .../requests/{id}/status`` (202 while queued or running, 200 when
  done), ``GET .../requests/{id}`` (the model's own answer: its status code, and its error if it
  failed), ``PUT .../requests/{id}/cancel``.
- FAL keeps a result for 1 hour (6 minutes when it is 10 KB or larger), so the webhook payload is
  the primary source and polling must not lag far behind.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx
import structlog

from aisha.closing import Closing
from aisha.providers.fal_http import (
    JsonDict,
    detail_text,
    error_detail,
    error_message,
    error_type,
    is_job_answer,
    json_object,
    retry_after,
    str_or,
)
from aisha.providers.fal_results import (
    ImageOut,
    ImagesOutput,
    parse_images_result,
    parse_training_result,
)
from aisha.providers.fal_storage import FalStorage
from aisha.remote import (
    CancelOutcome,
    RemoteAuthFailed,
    RemoteError,
    RemoteFailed,
    RemoteMalformedOutput,
    RemoteNotFound,
    RemoteNotReady,
    RemoteRefused,
    RemoteState,
    RemoteStatus,
    RemoteSubmission,
    RemoteUnavailable,
)

__all__ = [
    "WEBHOOK_PATH",
    "CancelOutcome",
    "FalClient",
    "ImageOut",
    "ImagesOutput",
    "app_path",
    "parse_images_result",
    "parse_training_result",
    "webhook_url",
]

log = structlog.get_logger(__name__)

DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_QUEUE_URL = "https://queue.fal.run"

# Apps under these namespaces have a three-part id (fal_client's AppId.from_endpoint_id).
_NAMESPACES = frozenset({"workflows", "comfy"})
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Statuses worth another try on an idempotent call (the official client retries these too).
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


# ----------------------------------------------------------------------------------- paths

# Where our HTTP app takes FAL's webhooks (api/fal.py serves it).
WEBHOOK_PATH = "/webhooks/fal"


def webhook_url(public_base_url: str, *, kind: str, row_id: object) -> str:
    """The ``fal_webhook`` URL for a job: ``kind`` names the feature, ``row_id`` its row.

    Both only say where to look; the signed request id in the webhook is what counts.
    """
    query = urlencode({"kind": kind, "id": str(row_id)})
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PATH}?{query}"


# FAL's queue state as every port names it (queued, running, done, unknown); None: FAL does not
# know the id. Anything else is still queued.
_PORT_STATES: dict[RemoteState | None, str] = {
    None: "unknown",
    RemoteState.COMPLETED: "done",
    RemoteState.IN_PROGRESS: "running",
}


def port_state(state: RemoteState | None) -> str:
    """`known_state`'s answer as a feature's state port spells it."""
    return _PORT_STATES.get(state, "queued")


def app_path(endpoint: str) -> str:
    """The part of an endpoint id that status/result/cancel URLs use: owner and app only.

    ``fal-ai/flux-lora`` → ``fal-ai/flux-lora``; ``fal-ai/flux/dev`` → ``fal-ai/flux``;
    ``workflows/owner/app/path`` → ``workflows/owner/app``.
    """
    parts = _endpoint_parts(endpoint)
    keep = 3 if parts[0] in _NAMESPACES else 2
    if len(parts) < keep:
        raise ValueError(f"FAL endpoint id needs an owner and an app: {endpoint!r}")
    return "/".join(parts[:keep])


def _endpoint_parts(endpoint: str) -> list[str]:
    parts = endpoint.strip("/").split("/")
    if len(parts) < 2 or not all(_SEGMENT.match(p) and p not in (".", "..") for p in parts):
        raise ValueError(f"not a FAL endpoint id: {endpoint!r}")
    return parts


def _check_request_id(request_id: str) -> str:
    # Request ids end up in URL paths; they come from FAL (or from a verified webhook), but a
    # strict shape keeps anything odd from turning into another path.
    if not _REQUEST_ID.match(request_id):
        raise ValueError(f"not a FAL request id: {request_id!r}")
    return request_id


# ----------------------------------------------------------------------------------- client


class FalClient(Closing):
    """FAL's queue API over httpx.

    ``http`` lets the app share one connection pool; without it the client owns one and closes it
    in ``aclose()``. The key travels only in the Authorization header of each request.
    """

    def __init__(
        self,
        *,
        key: str,
        queue_url: str = DEFAULT_QUEUE_URL,
        rest_url: str = DEFAULT_REST_URL,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not key:
            raise ValueError("FAL key is empty")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._key = key
        self._queue_url = queue_url.rstrip("/")
        self._rest_url = rest_url.rstrip("/")
        self._own_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()
        self._timeout = httpx.Timeout(timeout)
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._storage = FalStorage(
            http=self._http, rest_url=self._rest_url, headers=self._headers, timeout=self._timeout
        )

    def __repr__(self) -> str:
        return f"FalClient(queue_url={self._queue_url!r})"

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # ------------------------------------------------------------------------- operations

    async def upload(
        self, data: bytes, *, file_name: str, content_type: str, expires_in: int | None = None
    ) -> str:
        """Put a file on FAL's CDN and return its URL, for a bot that has no public address;
        with ``expires_in`` FAL deletes it after that many seconds (see `FalStorage.upload`)."""
        return await self._storage.upload(
            data, file_name=file_name, content_type=content_type, expires_in=expires_in
        )

    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """A file a job left on FAL's CDN (a trained LoRA, its config); see `FalStorage.download`."""
        return await self._storage.download(url, max_bytes=max_bytes)

    async def answers(self, url: str) -> bool:
        """Whether a CDN file is still there: False only when the CDN says it is gone."""
        return await self._storage.answers(url)

    async def submit(
        self, endpoint: str, payload: Mapping[str, Any], *, webhook_url: str | None = None
    ) -> RemoteSubmission:
        """Queue one job. Every submission is a paid job, so it is never retried blindly.

        Retried here only when FAL certainly queued nothing: the connection was never made, or
        FAL answered 429. Any other failure after the request may have left (a read timeout, a
        dropped connection, a 5xx) raises ``RemoteUnavailable(maybe_submitted=True)``: a retry could
        start a second paid job. The caller records the job row as submitting *before* calling and
        puts that row's id in ``webhook_url``; on an unknown outcome it keeps the row (and the
        credit hold) as it is instead of submitting again, so a job that did start still reports
        back through the webhook (which names the row, no request id needed), and the recovery
        sweep fails the row and releases the hold only when no webhook came within the job's
        time limit.
        """
        app = app_path(endpoint)  # validates the id before anything is sent
        url = f"{self._queue_url}/{endpoint.strip('/')}"
        if webhook_url is not None:
            url += "?" + urlencode({"fal_webhook": webhook_url})
        body = json.dumps(payload, ensure_ascii=False).encode()
        what = f"submit to {endpoint}"

        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post(
                    url,
                    content=body,
                    headers={**self._headers(), "Content-Type": "application/json"},
                    timeout=self._timeout,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached FAL: safe to try again.
                if attempt < self._max_attempts:
                    await self._backoff(attempt, what, type(exc).__name__)
                    continue
                raise RemoteUnavailable(f"FAL is unreachable ({what}): {type(exc).__name__}") from None
            except httpx.TransportError as exc:
                raise RemoteUnavailable(
                    f"FAL connection failed after sending ({what}): {type(exc).__name__}",
                    maybe_submitted=True,
                ) from None

            status = response.status_code
            if status == 429 and attempt < self._max_attempts:
                # A rate-limited submission is rejected, not queued.
                await self._backoff(attempt, what, "429", retry_after=retry_after(response))
                continue
            if status == 429:
                raise RemoteUnavailable(f"FAL rate limit ({what})", status_code=429)
            if status in (401, 403):
                raise RemoteAuthFailed(status, error_message(response), error_detail(response))
            if 400 <= status < 500:
                raise RemoteRefused(status, error_message(response), error_detail(response))
            if status >= 500:
                raise RemoteUnavailable(
                    f"FAL answered {status} ({what}): {error_message(response)}",
                    status_code=status,
                    maybe_submitted=True,
                )
            data = json_object(response)
            request_id = data.get("request_id") if data is not None else None
            if data is None or not isinstance(request_id, str) or not request_id:
                raise RemoteUnavailable(
                    f"FAL answered {status} without a request id ({what})", maybe_submitted=True
                )
            base = f"{self._queue_url}/{app}/requests/{request_id}"
            position = data.get("queue_position")
            return RemoteSubmission(
                request_id=request_id,
                status_url=str_or(data.get("status_url"), base + "/status"),
                response_url=str_or(data.get("response_url"), base),
                cancel_url=str_or(data.get("cancel_url"), base + "/cancel"),
                queue_position=position if isinstance(position, int) else None,
            )

    async def known_state(self, endpoint: str, request_id: str) -> RemoteState | None:
        """The job's queue state, or None when FAL does not know the id (what every poller asks)."""
        try:
            return (await self.status(endpoint, request_id)).state
        except RemoteNotFound:
            return None

    async def status(self, endpoint: str, request_id: str, *, logs: bool = False) -> RemoteStatus:
        """The job's queue state. Retries transient failures; raises RemoteNotFound for an unknown id."""
        url = self._request_url(endpoint, request_id) + "/status"
        response = await self._idempotent(
            "GET", url, params={"logs": "1"} if logs else None, what=f"status of {request_id}"
        )
        if response.status_code == 404:
            raise RemoteNotFound(f"FAL does not know request {request_id} on {app_path(endpoint)}")
        if response.status_code in (401, 403):
            raise RemoteAuthFailed(response.status_code, error_message(response), error_detail(response))
        if response.status_code >= 400:
            raise RemoteError(
                f"FAL status of {request_id} failed ({response.status_code}): {error_message(response)}"
            )
        data = json_object(response)
        raw_state = data.get("status") if data is not None else None
        try:
            state = RemoteState(str(raw_state))
        except ValueError:
            raise RemoteError(f"FAL status of {request_id} is unknown: {raw_state!r}") from None
        assert data is not None
        position = data.get("queue_position")
        raw_logs = data.get("logs")
        metrics = data.get("metrics")
        error = data.get("error")
        error_type = data.get("error_type")
        return RemoteStatus(
            state=state,
            queue_position=position if isinstance(position, int) else None,
            logs=tuple(x for x in raw_logs if isinstance(x, dict)) if isinstance(raw_logs, list) else (),
            error=detail_text(error) if error else None,
            error_type=error_type if isinstance(error_type, str) else None,
            metrics=metrics if isinstance(metrics, dict) else {},
        )

    async def result(self, endpoint: str, request_id: str) -> JsonDict:
        """The output of a completed job. Call it after status says COMPLETED (or on a webhook).

        Raises RemoteFailed when the job failed (FAL returns the model's error here),
        RemoteNotReady before completion, RemoteNotFound for an unknown or expired request.
        """
        url = self._request_url(endpoint, request_id)
        response = await self._idempotent("GET", url, what=f"result of {request_id}", job_errors=True)
        status = response.status_code
        if status == 202 or (status == 400 and "in progress" in error_message(response).lower()):
            raise RemoteNotReady(f"FAL request {request_id} has not completed yet")
        if status == 404:
            raise RemoteNotFound(f"FAL has no result for request {request_id} (unknown or expired)")
        if status in (401, 403):
            raise RemoteAuthFailed(status, error_message(response), error_detail(response))
        if status >= 400:
            raise RemoteFailed(
                f"FAL request {request_id} failed ({status}): {error_message(response)}",
                status_code=status,
                error_type=error_type(response),
                detail=error_detail(response),
            )
        data = json_object(response)
        if data is None:
            raise RemoteMalformedOutput(f"FAL result of {request_id} is not a JSON object")
        return data

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        """Ask FAL to drop a queued job (or signal a running one). Safe to repeat."""
        url = self._request_url(endpoint, request_id) + "/cancel"
        response = await self._idempotent("PUT", url, what=f"cancel of {request_id}")
        data = json_object(response)
        raw = data.get("status") if data is not None else None
        try:
            return CancelOutcome(str(raw))
        except ValueError:
            pass
        if response.status_code == 404:
            return CancelOutcome.NOT_FOUND
        if response.status_code in (401, 403):
            raise RemoteAuthFailed(response.status_code, error_message(response), error_detail(response))
        if response.status_code >= 400:
            raise RemoteError(
                f"FAL cancel of {request_id} failed ({response.status_code}): {error_message(response)}"
            )
        return CancelOutcome.CANCELLATION_REQUESTED

    # ------------------------------------------------------------------------- plumbing

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._key}", "Accept": "application/json"}

    def _request_url(self, endpoint: str, request_id: str) -> str:
        return f"{self._queue_url}/{app_path(endpoint)}/requests/{_check_request_id(request_id)}"

    async def _idempotent(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        job_errors: bool = False,
    ) -> httpx.Response:
        """Send a request that may be repeated, retrying transport errors and transient statuses.

        With ``job_errors`` a 5xx that FAL's own server answered (see ``is_job_answer``) is the
        stored failure of the job (the result endpoint replays it), not an outage, and is
        returned, not retried.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    method, url, params=params, headers=self._headers(), timeout=self._timeout
                )
            except httpx.TransportError as exc:
                if attempt < self._max_attempts:
                    await self._backoff(attempt, what, type(exc).__name__)
                    continue
                raise RemoteUnavailable(f"FAL is unreachable ({what}): {type(exc).__name__}") from None
            status = response.status_code
            stored_failure = job_errors and status >= 500 and is_job_answer(response)
            if status in _RETRY_STATUSES and not stored_failure:
                if attempt < self._max_attempts:
                    await self._backoff(attempt, what, str(status), retry_after=retry_after(response))
                    continue
                raise RemoteUnavailable(
                    f"FAL answered {status} ({what}): {error_message(response)}", status_code=status
                )
            return response

    async def _backoff(
        self, attempt: int, what: str, reason: str, *, retry_after: float | None = None
    ) -> None:
        delay = min(self._backoff_max, self._backoff_base * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: many workers polling must not retry in step
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._backoff_max))
        log.info("fal_retry", what=what, reason=reason, attempt=attempt, delay=round(delay, 2))
        await self._sleep(delay)
