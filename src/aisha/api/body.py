"""Reading a request body under a size cap, without ever holding more than the cap."""

from __future__ import annotations

from aiohttp import web


class BodyTooLarge(Exception):
    """The body (announced or sent) is over the cap."""


class BodyIncomplete(Exception):
    """The client went away (or broke its chunked encoding) before the body was complete."""


async def read_capped(request: web.Request, limit: int) -> bytes:
    """The body, read piece by piece as it arrives and abandoned as soon as it goes over `limit` bytes.

    A Content-Length over the cap is refused before a byte is read; a chunked body, or one whose
    Content-Length understates it, is refused at the piece that crosses the cap.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge
    body = bytearray()
    try:
        async for chunk in request.content.iter_any():
            if len(body) + len(chunk) > limit:
                raise BodyTooLarge
            body += chunk
    except (ConnectionError, web.RequestPayloadError):
        raise BodyIncomplete from None
    return bytes(body)
