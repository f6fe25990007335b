"""Object storage: user photos, generated images and audio, on local disk or S3/MinIO."""

from aisha.storage.base import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStorage,
    StorageError,
    validate_key,
)
from aisha.storage.factory import create_storage
from aisha.storage.local import LocalStorage
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
