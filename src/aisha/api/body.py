"""Reading a request body under a size cap, without ever holding more than the cap."""

from __future__ import annotations

from fastapi import Request


class BodyTooLarge(Exception):
    """The body (announced or sent) is over the cap."""


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, streamed chunk by chunk and abandoned as soon as it goes over `limit` bytes.

    A Content-Length over the cap is refused before a byte is read; a chunked body, or one whose
    Content-Length understates it, is refused at the chunk that crosses the cap.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge
        body += chunk
    return bytes(body)
