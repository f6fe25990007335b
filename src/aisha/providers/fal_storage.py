"""FAL's storage: files put on its CDN for a model to read, and files a job left there.

The protocol of FAL's own clients (fal-js `storage.ts`): ask the REST API for an upload URL, PUT
the bytes there, and hand the returned `file_url` to a model. CDN links are capabilities of their
own: the key is never sent with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from aisha.providers.fal_http import error_detail, error_message
from aisha.remote import RemoteAuthFailed, RemoteMalformedOutput, RemoteNotFound, RemoteUnavailable


class FalStorage:
    """Uploads to and downloads from FAL's CDN over the client's connection pool."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        rest_url: str,
        headers: Callable[[], dict[str, str]],
        timeout: httpx.Timeout,
    ) -> None:
        self._http = http
        self._rest_url = rest_url
        self._headers = headers
        self._timeout = timeout

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
                raise RemoteAuthFailed(response.status_code, error_message(response), error_detail(response))
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
