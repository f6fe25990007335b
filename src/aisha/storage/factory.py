"""Build the storage backend named by ``STORAGE_URL``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from aisha.storage.base import InvalidKeyError, ObjectStorage
from aisha.storage.local import LocalStorage

_USAGE = "STORAGE_URL must be file://PATH (file://./data/files, file:///abs/path) or s3://BUCKET[/PREFIX]"


def create_storage(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_public_endpoint_url: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str | None = None,
    url_signer: Callable[[str, int], str] | None = None,
) -> ObjectStorage:
    """``file://`` → LocalStorage (a relative path is taken from the current directory), ``s3://`` → S3Storage.

    ``url_signer`` (signed links served by the HTTP app) gives either backend its public URLs; an
    S3 bucket presigns its own links instead when ``s3_public_endpoint_url`` names its public address.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        # Not urlsplit's path: in "file://./data/files" the "." would be read as a host name.
        raw = url[len("file://") :] if url.startswith("file://") else parts.path
        if not raw or parts.query or parts.fragment:
            raise ValueError(f"{_USAGE}; got a file URL without a plain path")
        path = Path(raw)
        return LocalStorage(path if path.is_absolute() else Path.cwd() / path, url_signer=url_signer)
    if parts.scheme == "s3":
        # Credentials come from S3_ACCESS_KEY / S3_SECRET_KEY; never echo a URL that may hold them.
        if parts.username is not None or parts.password is not None:
            raise ValueError("STORAGE_URL must not contain credentials: set S3_ACCESS_KEY and S3_SECRET_KEY")
        if not parts.hostname or parts.port is not None or parts.query or parts.fragment:
            raise ValueError(f"{_USAGE}; got an s3 URL without a plain bucket name")
        from aisha.storage.s3 import S3Storage  # aioboto3 is heavy: only s3:// storage needs it

        try:
            return S3Storage(
                parts.netloc,
                endpoint_url=s3_endpoint_url,
                public_endpoint_url=s3_public_endpoint_url,
                url_signer=url_signer,
                access_key=s3_access_key,
                secret_key=s3_secret_key,
                region=s3_region,
                prefix=parts.path.strip("/"),
            )
        except InvalidKeyError as exc:
            raise ValueError(f"STORAGE_URL has an invalid prefix: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"STORAGE_URL: {exc}") from None
    raise ValueError(f"{_USAGE}; got scheme {parts.scheme!r}" if parts.scheme else f"{_USAGE}; got no scheme")
