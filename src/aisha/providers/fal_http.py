"""Reading FAL's HTTP answers: JSON bodies, error lines and types, Retry-After."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

JsonDict = dict[str, Any]
DETAIL_LIMIT = 600


def str_or(value: object, default: str) -> str:
    return value if isinstance(value, str) and value else default


def json_object(response: httpx.Response) -> JsonDict | None:
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def error_detail(response: httpx.Response) -> Any:
    data = json_object(response)
    if data is None:
        return None
    return data.get("detail", data)


def is_job_answer(response: httpx.Response) -> bool:
    """Whether an error response came from FAL's queue server (the job's stored outcome) rather
    than from the ingress in front of it (an outage worth retrying).

    fal_client tells them apart the same way: FAL's server sets ``x-fal-request-id``, an ingress
    page (nginx HTML) does not. The job's own errors also come as ``error_type`` or in the shape
    of FAL's error reference: ``detail`` as a list of ``{loc, msg, type}``. Anything else (an
    HTML page, an empty or other body) is treated as an outage.
    """
    if "x-fal-request-id" in response.headers or error_type(response):
        return True
    data = json_object(response)
    detail = data.get("detail") if data is not None else None
    return (
        isinstance(detail, list) and bool(detail) and all(isinstance(d, dict) and "type" in d for d in detail)
    )


def error_type(response: httpx.Response) -> str | None:
    header: str | None = response.headers.get("x-fal-error-type")
    if header:
        return header
    data = json_object(response)
    value = data.get("error_type") if data is not None else None
    return value if isinstance(value, str) and value else None


def error_message(response: httpx.Response) -> str:
    """A short human line from FAL's error body (``detail`` as text or a list of field errors)."""
    data = json_object(response)
    if data is not None:
        for key in ("detail", "error", "message"):
            if data.get(key):
                return detail_text(data[key])
        return truncate(json.dumps(data, ensure_ascii=False))
    text = response.text.strip()
    if "<html" in text.lower():
        return response.reason_phrase or f"HTTP {response.status_code}"
    return truncate(text) or response.reason_phrase or f"HTTP {response.status_code}"


def detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return truncate(detail)
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
        return truncate("; ".join(parts))
    return truncate(json.dumps(detail, ensure_ascii=False, default=str))


def truncate(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
