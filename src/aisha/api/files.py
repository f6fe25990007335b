"""GET /files/{key}: a stored file behind a signed, expiring link (see storage/links.py)."""

from __future__ import annotations

import mimetypes
from http import HTTPStatus

from aiohttp import web

from aisha.api.deps import refusal, runtime_of
from aisha.storage import InvalidKeyError, ObjectNotFoundError


async def signed_file(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    services = runtime_of(request).services
    signer = services.link_signer
    expires, signature = request.query.get("expires", ""), request.query.get("signature", "")
    if signer is None or not signer.verify(key, expires, signature):
        return refusal(HTTPStatus.FORBIDDEN, "invalid or expired link")
    try:
        size = await services.storage.size(key)
    except (ObjectNotFoundError, InvalidKeyError):
        return refusal(HTTPStatus.NOT_FOUND, "no such file")
    # The type by the key's extension (a training archive is application/zip), for fetchers that look.
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    if media_type.startswith("text/"):
        media_type += "; charset=utf-8"  # our texts (transcripts, subtitles) are written as UTF-8
    response = web.StreamResponse(headers={"Content-Type": media_type})
    response.content_length = size
    await response.prepare(request)
    if request.method != "HEAD":  # a HEAD (a fetcher checking the link first) gets the headers alone
        async for chunk in services.storage.stream(key):
            await response.write(chunk)
    await response.write_eof()
    return response


# The key may hold slashes (users/1/avatars/2/training.zip).
routes = [web.get("/files/{key:.+}", signed_file)]
