"""GET /files/{key}: a stored file behind a signed, expiring link (see storage/links.py)."""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import StreamingResponse

from aisha.api.deps import RuntimeDep
from aisha.storage import InvalidKeyError, ObjectNotFoundError

router = APIRouter()


@router.get("/files/{key:path}", include_in_schema=False)
async def signed_file(
    key: str, runtime: RuntimeDep, expires: str = "", signature: str = ""
) -> StreamingResponse:
    signer = runtime.services.link_signer
    if signer is None or not signer.verify(key, expires, signature):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or expired link")
    storage = runtime.services.storage
    try:
        size = await storage.size(key)
    except (ObjectNotFoundError, InvalidKeyError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file") from None

    async def body() -> AsyncIterator[bytes]:
        async for chunk in storage.stream(key):
            yield chunk

    # The type by the key's extension (a training archive is application/zip), for fetchers that look.
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return StreamingResponse(body(), media_type=media_type, headers={"Content-Length": str(size)})
