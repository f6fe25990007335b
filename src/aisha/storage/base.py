"""The object storage contract shared by the local and the S3 backends.

Keys are relative POSIX paths such as ``avatars/42/photo-01.jpg``. Both backends accept
exactly the same keys, so a key that works in development on disk works on S3 too, and no key
can name anything outside the storage root.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

MAX_KEY_LENGTH = 1024
DEFAULT_CHUNK_SIZE = 64 * 1024

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class StorageError(Exception):
    """Any failure of the object storage; the message never contains credentials."""


class InvalidKeyError(StorageError):
    """The key is not a safe relative path of ``[A-Za-z0-9._-]`` segments."""


class ObjectNotFoundError(StorageError):
    """No object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key!r}")
        self.key = key


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe object key, else raise ``InvalidKeyError``."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_LENGTH} characters")
    # Checked one by one so the message says what is wrong (all are also outside the charset).
    if "\x00" in key:
        raise InvalidKeyError("object key contains a NUL character")
    if "\\" in key:
        raise InvalidKeyError(f"object key contains a backslash: {key!r}")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key must be relative, got {key!r}")
    for segment in key.split("/"):
        if not segment:
            raise InvalidKeyError(f"object key has an empty path segment: {key!r}")
        if segment in (".", ".."):
            raise InvalidKeyError(f"object key may not contain '.' or '..' segments: {key!r}")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKeyError(f"object key may only contain A-Z a-z 0-9 . _ - and '/': {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Validate a prefix for ``delete_prefix``: a key, optionally ending in one ``/``.

    Returned without the trailing slash. A prefix names a folder: ``users/1`` covers
    ``users/1/a.jpg`` but never ``users/10/a.jpg``. An empty prefix (everything) is refused.
    """
    if isinstance(prefix, str) and prefix.endswith("/"):
        prefix = prefix[:-1]
    return validate_key(prefix)


def validate_expires_in(expires_in: int) -> int:
    # SigV4 presigned URLs allow at most 7 days; the same bound keeps local links comparable.
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or not 1 <= expires_in <= 604800:
        raise ValueError(f"expires_in must be between 1 and 604800 seconds, got {expires_in!r}")
    return expires_in


@runtime_checkable
class ObjectStorage(Protocol):
    """Where the bot keeps files: user photos, generated images, audio being transcribed."""

    async def put(
        self, key: str, data: bytes | AsyncIterator[bytes], *, content_type: str | None = None
    ) -> None:
        """Store ``data`` under ``key``, replacing any object there; readers never see a partial object.

        An async iterator is consumed chunk by chunk, so a large upload is never held in memory whole.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The whole object. Raises ``ObjectNotFoundError`` if there is none."""
        ...

    def stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The object in chunks of at most ``chunk_size`` bytes.

        Raises ``ObjectNotFoundError`` on the first iteration if there is no object.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder ``prefix``; return how many were removed."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int:
        """Size in bytes. Raises ``ObjectNotFoundError`` if there is no object."""
        ...

    async def url(self, key: str, *, expires_in: int) -> str:
        """A URL another service can GET the object from for ``expires_in`` seconds."""
        ...

    async def aclose(self) -> None:
        """Release connections; the storage may not be used afterwards."""
        ...
