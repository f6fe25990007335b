"""Object storage: user photos, generated images and audio, on local disk or S3/MinIO."""

from typing import TYPE_CHECKING

from aisha.storage.base import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStorage,
    StorageError,
    validate_key,
)
from aisha.storage.factory import create_storage
from aisha.storage.local import LocalStorage

if TYPE_CHECKING:
    from aisha.storage.s3 import S3Storage

__all__ = [
    "InvalidKeyError",
    "LocalStorage",
    "ObjectNotFoundError",
    "ObjectStorage",
    "S3Storage",
    "StorageError",
    "create_storage",
    "validate_key",
]


def __getattr__(name: str) -> object:
    # S3Storage brings in aioboto3 (botocore and all its service data): only for s3:// storage.
    if name == "S3Storage":
        from aisha.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
