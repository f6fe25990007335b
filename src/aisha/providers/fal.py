"""A client for FAL's queue REST API: submit a job, read its status and result, cancel it.

The client is generic (an endpoint id and a JSON payload in, dicts out) so avatar training and
image generation can share it through their own Protocols; two small parsers turn the outputs of
the LoRA trainers and of the FLUX image endpoints into typed values.

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
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import httpx
import structlog

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
    "TrainingOutput",
    "app_path",
    "parse_images_result",
    "parse_training_result",
    "webhook_url",
]

log = structlog.get_logger(__name__)

JsonDict = dict[str, Any]

DEFAULT_REST_URL = "https://rest.fal.ai"
DEFAULT_QUEUE_URL = "https://queue.fal.run"

# Apps under these namespaces have a three-part id (fal_client's AppId.from_endpoint_id).
_NAMESPACES = frozenset({"workflows", "comfy"})
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_DETAIL_LIMIT = 600
# Statuses worth another try on an idempotent call (the official client retries these too).
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


# ----------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class TrainingOutput:
    lora_url: str
    config_url: str | None


@dataclass(frozen=True, slots=True)
class ImageOut:
    url: str
    width: int | None
    height: int | None
    content_type: str | None
    nsfw: bool


@dataclass(frozen=True, slots=True)
class ImagesOutput:
    images: tuple[ImageOut, ...]
    seed: int | None
    prompt: str | None = None


# ----------------------------------------------------------------------------------- paths

# Where our HTTP app takes FAL's webhooks (api/fal.py serves it).
WEBHOOK_PATH = "/webhooks/fal"


def webhook_url(public_base_url: str, *, kind: str, row_id: object) -> str:
    """The ``fal_webhook`` URL for a job: ``kind`` names the feature, ``row_id`` its row.

    Both only say where to look; the signed request id in the webhook is what counts.
    """
    query = urlencode({"kind": kind, "id": str(row_id)})
    return f"{public_base_url.rstrip('/')}{WEBHOOK_PATH}?{query}"


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


class FalClient:
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

    def __repr__(self) -> str:
        return f"FalClient(queue_url={self._queue_url!r})"

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------- operations

    async def upload(
        self, data: bytes, *, file_name: str, content_type: str, expires_in: int | None = None
    ) -> str:
        """Put a file on FAL's CDN and return its URL, for a bot that has no public address.

        The protocol of FAL's own clients (fal-js `storage.ts`): ask the REST API for an upload
        URL, PUT the bytes there, and hand the returned `file_url` to a model. With ``expires_in``
        FAL deletes the file after that many seconds: the object lifecycle preference that
        fal_client sends with the upload request (``_object_lifecycle_headers``: both
        ``X-Fal-Object-Lifecycle-Preference`` and, for CDN uploads, ``X-Fal-Object-Lifecycle``).
        """
        initiate = f"{self._rest_url}/storage/upload/initiate?storage_type=fal-cdn-v3"
        headers = self._headers()
        if expires_in is not None:
            if expires_in < 1:
                raise ValueError(f"expires_in must be positive, got {expires_in}")
            lifecycle = json.dumps({"expiration_duration_seconds": expires_in})
            headers |= {"X-Fal-Object-Lifecycle-Preference": lifecycle, "X-Fal-Object-Lifecycle": lifecycle}
        try:
            response = await self._http.post(
                initiate,
                json={"file_name": file_name, "content_type": content_type},
                headers=headers,
                timeout=self._timeout,
            )
            if response.status_code in (401, 403):
                raise RemoteAuthFailed(
                    response.status_code, _error_message(response), _error_detail(response)
                )
            if response.status_code >= 400:
                raise RemoteUnavailable(f"FAL storage refused the upload: HTTP {response.status_code}")
            target = response.json()
            upload_url, file_url = target.get("upload_url"), target.get("file_url")
            if not isinstance(upload_url, str) or not isinstance(file_url, str):
                raise RemoteMalformedOutput("FAL storage gave no upload_url/file_url")
            put = await self._http.put(
                upload_url, content=data, headers={"Content-Type": content_type}, timeout=self._timeout
            )
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"FAL storage is unreachable: {type(exc).__name__}") from None
        if put.status_code >= 400:
            raise RemoteUnavailable(f"FAL storage refused the upload: HTTP {put.status_code}")
        return file_url

    async def download(self, url: str, *, max_bytes: int) -> bytes:
        """A file a job left on FAL's CDN (a trained LoRA, its config).

        Raises RemoteNotFound when the CDN no longer has it (media expiry), RemoteUnavailable when it
        can't be reached, RemoteMalformedOutput past ``max_bytes``. CDN links are capabilities of
        their own: the key is never sent with them.
        """
        chunks: list[bytes] = []
        size = 0
        try:
            async with self._http.stream(
                "GET", url, timeout=self._timeout, follow_redirects=True
            ) as response:
                if response.status_code in (403, 404, 410):
                    raise RemoteNotFound(f"FAL's CDN no longer has the file (HTTP {response.status_code})")
                if response.status_code >= 400:
                    raise RemoteUnavailable(
                        f"FAL's CDN answered {response.status_code}", status_code=response.status_code
                    )
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise RemoteMalformedOutput(f"the file is larger than {max_bytes} bytes")
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise RemoteUnavailable(f"FAL's CDN is unreachable: {type(exc).__name__}") from None
        return b"".join(chunks)

    async def answers(self, url: str) -> bool:
        """Whether a CDN file is still there: False only when the CDN says it is gone (403/404/410).

        A HEAD costs a few hundred bytes; an outage or an odd status counts as "there" (FAL's
        own download then decides, and a failed job releases its hold).
        """
        try:
            response = await self._http.head(url, timeout=self._timeout, follow_redirects=True)
        except httpx.TransportError:
            return True
        return response.status_code not in (403, 404, 410)

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
                await self._backoff(attempt, what, "429", retry_after=_retry_after(response))
                continue
            if status == 429:
                raise RemoteUnavailable(f"FAL rate limit ({what})", status_code=429)
            if status in (401, 403):
                raise RemoteAuthFailed(status, _error_message(response), _error_detail(response))
            if 400 <= status < 500:
                raise RemoteRefused(status, _error_message(response), _error_detail(response))
            if status >= 500:
                raise RemoteUnavailable(
                    f"FAL answered {status} ({what}): {_error_message(response)}",
                    status_code=status,
                    maybe_submitted=True,
                )
            data = _json_object(response)
            request_id = data.get("request_id") if data is not None else None
            if data is None or not isinstance(request_id, str) or not request_id:
                raise RemoteUnavailable(
                    f"FAL answered {status} without a request id ({what})", maybe_submitted=True
                )
            base = f"{self._queue_url}/{app}/requests/{request_id}"
            position = data.get("queue_position")
            return RemoteSubmission(
                request_id=request_id,
                status_url=_str_or(data.get("status_url"), base + "/status"),
                response_url=_str_or(data.get("response_url"), base),
                cancel_url=_str_or(data.get("cancel_url"), base + "/cancel"),
                queue_position=position if isinstance(position, int) else None,
            )

    async def status(self, endpoint: str, request_id: str, *, logs: bool = False) -> RemoteStatus:
        """The job's queue state. Retries transient failures; raises RemoteNotFound for an unknown id."""
        url = self._request_url(endpoint, request_id) + "/status"
        response = await self._idempotent(
            "GET", url, params={"logs": "1"} if logs else None, what=f"status of {request_id}"
        )
        if response.status_code == 404:
            raise RemoteNotFound(f"FAL does not know request {request_id} on {app_path(endpoint)}")
        if response.status_code in (401, 403):
            raise RemoteAuthFailed(response.status_code, _error_message(response), _error_detail(response))
        if response.status_code >= 400:
            raise RemoteError(
                f"FAL status of {request_id} failed ({response.status_code}): {_error_message(response)}"
            )
        data = _json_object(response)
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
            error=_detail_text(error) if error else None,
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
        if status == 202 or (status == 400 and "in progress" in _error_message(response).lower()):
            raise RemoteNotReady(f"FAL request {request_id} has not completed yet")
        if status == 404:
            raise RemoteNotFound(f"FAL has no result for request {request_id} (unknown or expired)")
        if status in (401, 403):
            raise RemoteAuthFailed(status, _error_message(response), _error_detail(response))
        if status >= 400:
            raise RemoteFailed(
                f"FAL request {request_id} failed ({status}): {_error_message(response)}",
                status_code=status,
                error_type=_error_type(response),
                detail=_error_detail(response),
            )
        data = _json_object(response)
        if data is None:
            raise RemoteMalformedOutput(f"FAL result of {request_id} is not a JSON object")
        return data

    async def cancel(self, endpoint: str, request_id: str) -> CancelOutcome:
        """Ask FAL to drop a queued job (or signal a running one). Safe to repeat."""
        url = self._request_url(endpoint, request_id) + "/cancel"
        response = await self._idempotent("PUT", url, what=f"cancel of {request_id}")
        data = _json_object(response)
        raw = data.get("status") if data is not None else None
        try:
            return CancelOutcome(str(raw))
        except ValueError:
            pass
        if response.status_code == 404:
            return CancelOutcome.NOT_FOUND
        if response.status_code in (401, 403):
            raise RemoteAuthFailed(response.status_code, _error_message(response), _error_detail(response))
        if response.status_code >= 400:
            raise RemoteError(
                f"FAL cancel of {request_id} failed ({response.status_code}): {_error_message(response)}"
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

        With ``job_errors`` a 5xx that FAL's own server answered (see ``_is_job_answer``) is the
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
            stored_failure = job_errors and status >= 500 and _is_job_answer(response)
            if status in _RETRY_STATUSES and not stored_failure:
                if attempt < self._max_attempts:
                    await self._backoff(attempt, what, str(status), retry_after=_retry_after(response))
                    continue
                raise RemoteUnavailable(
                    f"FAL answered {status} ({what}): {_error_message(response)}", status_code=status
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


# ----------------------------------------------------------------------------------- parsing


def parse_training_result(data: Mapping[str, Any]) -> TrainingOutput:
    """Output of fal-ai/flux-lora-portrait-trainer and fal-ai/flux-lora-fast-training."""
    lora = data.get("diffusers_lora_file")
    lora_url = lora.get("url") if isinstance(lora, Mapping) else None
    if not isinstance(lora_url, str) or not lora_url:
        raise RemoteMalformedOutput("training output has no diffusers_lora_file.url")
    config = data.get("config_file")
    config_url = config.get("url") if isinstance(config, Mapping) else None
    return TrainingOutput(lora_url=lora_url, config_url=config_url if isinstance(config_url, str) else None)


def parse_images_result(data: Mapping[str, Any]) -> ImagesOutput:
    """Output of fal-ai/flux-lora and fal-ai/flux/*: images, their NSFW flags and the seed."""
    raw_images = data.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise RemoteMalformedOutput("image output has no images")
    flags = data.get("has_nsfw_concepts")
    nsfw = flags if isinstance(flags, list) else []
    images: list[ImageOut] = []
    for index, item in enumerate(raw_images):
        url = item.get("url") if isinstance(item, Mapping) else None
        if not isinstance(url, str) or not url:
            raise RemoteMalformedOutput(f"image {index} has no url")
        assert isinstance(item, Mapping)
        content_type = item.get("content_type")
        images.append(
            ImageOut(
                url=url,
                width=_int_or_none(item.get("width")),
                height=_int_or_none(item.get("height")),
                content_type=content_type if isinstance(content_type, str) else None,
                # Only FAL's explicit True marks an image; with no flag (checker off) the
                # service's own check decides.
                nsfw=index < len(nsfw) and nsfw[index] is True,
            )
        )
    prompt = data.get("prompt")
    return ImagesOutput(
        images=tuple(images),
        seed=_int_or_none(data.get("seed")),
        prompt=prompt if isinstance(prompt, str) else None,
    )


# ----------------------------------------------------------------------------------- helpers


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _json_object(response: httpx.Response) -> JsonDict | None:
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _error_detail(response: httpx.Response) -> Any:
    data = _json_object(response)
    if data is None:
        return None
    return data.get("detail", data)


def _is_job_answer(response: httpx.Response) -> bool:
    """Whether an error response came from FAL's queue server (the job's stored outcome) rather
    than from the ingress in front of it (an outage worth retrying).

    fal_client tells them apart the same way: FAL's server sets ``x-fal-request-id``, an ingress
    page (nginx HTML) does not. The job's own errors also come as ``error_type`` or in the shape
    of FAL's error reference: ``detail`` as a list of ``{loc, msg, type}``. Anything else (an
    HTML page, an empty or other body) is treated as an outage.
    """
    if "x-fal-request-id" in response.headers or _error_type(response):
        return True
    data = _json_object(response)
    detail = data.get("detail") if data is not None else None
    return (
        isinstance(detail, list) and bool(detail) and all(isinstance(d, dict) and "type" in d for d in detail)
    )


def _error_type(response: httpx.Response) -> str | None:
    header: str | None = response.headers.get("x-fal-error-type")
    if header:
        return header
    data = _json_object(response)
    value = data.get("error_type") if data is not None else None
    return value if isinstance(value, str) and value else None


def _error_message(response: httpx.Response) -> str:
    """A short human line from FAL's error body (``detail`` as text or a list of field errors)."""
    data = _json_object(response)
    if data is not None:
        for key in ("detail", "error", "message"):
            if data.get(key):
                return _detail_text(data[key])
        return _truncate(json.dumps(data, ensure_ascii=False))
    text = response.text.strip()
    if "<html" in text.lower():
        return response.reason_phrase or f"HTTP {response.status_code}"
    return _truncate(text) or response.reason_phrase or f"HTTP {response.status_code}"


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return _truncate(detail)
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc if x != "body") if isinstance(loc, list) else ""
                msg = str(item.get("msg", item.get("type", "invalid")))
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(item))
        return _truncate("; ".join(parts))
    return _truncate(json.dumps(detail, ensure_ascii=False, default=str))


def _truncate(text: str) -> str:
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
