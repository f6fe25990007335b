"""Object storage on S3 or an S3-compatible server (MinIO): ``s3://bucket[/prefix]``."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, NoReturn, cast

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from aisha.db.session import outside_call
from aisha.storage.base import (
    DEFAULT_CHUNK_SIZE,
    ObjectNotFoundError,
    StorageError,
    validate_expires_in,
    validate_key,
    validate_prefix,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part of a multipart upload but the last
DEFAULT_PART_SIZE = 8 * MIB
_MAX_PARTS = 10_000
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Objects in one bucket, optionally under a key prefix (``s3://bucket/prefix``).

    One client (one connection pool) is opened on first use and kept until ``aclose()``; it
    belongs to the event loop that opened it. Credentials left as ``None`` come from the usual
    AWS chain (environment, instance role). Uploads from an async iterator are streamed as a
    multipart upload of ``part_size`` parts, so at most about one part is held in memory.
    Uploads aborted by a crash can leave parts behind: give the bucket a lifecycle rule that
    aborts incomplete multipart uploads.

    ``url()`` hands out a link someone outside can fetch: presigned on ``public_endpoint_url``
    (the bucket's outside address; a presigned URL is signed for its host, so never on the
    internal ``endpoint_url``), else ``url_signer``'s link through the HTTP app, else none.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        url_signer: Callable[[str, int], str] | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        region: str | None = None,
        prefix: str = "",
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part size)")
        self._bucket = bucket
        self._prefix = validate_prefix(prefix) + "/" if prefix.strip("/") else ""
        self._part_size = part_size
        self._endpoint_url = endpoint_url
        self._public_endpoint_url = public_endpoint_url
        self._url_signer = url_signer
        self._region = region
        self._session = aioboto3.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        checksums = "when_required" if endpoint_url else "when_supported"
        self._config = AioConfig(
            signature_version="s3v4",
            # S3-compatible servers (MinIO) are addressed by path, not by bucket subdomain.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            # Not every S3-compatible server understands the newer default CRC checksums.
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        )
        self._client: S3Client | None = None
        self._presigner: S3Client | None = None  # on public_endpoint_url; signs links, sends nothing
        self._exit_stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self._bucket!r}, prefix={self._prefix!r}, endpoint_url={self._endpoint_url!r})"

    # -- client -------------------------------------------------------------------------------

    async def _get_client(self) -> S3Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._open(self._endpoint_url)
            return self._client

    async def _get_presigner(self, endpoint_url: str) -> S3Client:
        if self._presigner is not None:
            return self._presigner
        async with self._lock:
            if self._presigner is None:
                self._presigner = await self._open(endpoint_url)
            return self._presigner

    async def _open(self, endpoint_url: str | None) -> S3Client:
        """A client on ``endpoint_url``, closed by ``aclose()``; called under the lock."""
        stack = self._exit_stack or AsyncExitStack()
        client = await stack.enter_async_context(
            self._session.client(
                "s3", endpoint_url=endpoint_url, region_name=self._region, config=self._config
            )
        )
        self._exit_stack = stack
        return client

    async def aclose(self) -> None:
        """Close the connection pool; a later call opens a new one."""
        async with self._lock:
            stack, self._exit_stack = self._exit_stack, None
            self._client = self._presigner = None
            if stack is not None:
                await stack.aclose()

    # -- helpers ------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def _fail(self, operation: str, key: str, exc: Exception) -> NoReturn:
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(key) from exc
            detail = code or str(exc)
        else:
            detail = str(exc)
        raise StorageError(f"S3 {operation} of {key!r} in bucket {self._bucket!r} failed: {detail}") from exc

    @contextlib.contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore errors into ObjectNotFoundError / StorageError."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            self._fail(operation, key, exc)

    # -- writing ------------------------------------------------------------------------------

    @outside_call
    async def put(
        self, key: str, data: bytes | AsyncIterator[bytes], *, content_type: str | None = None
    ) -> None:
        full_key = self._full_key(key)
        content_type = content_type or "application/octet-stream"
        client = await self._get_client()
        if isinstance(data, bytes | bytearray | memoryview):
            with self._errors("put", key):
                await client.put_object(
                    Bucket=self._bucket, Key=full_key, Body=bytes(data), ContentType=content_type
                )
            return
        await self._put_stream(client, key, full_key, data, content_type)

    async def _put_stream(
        self, client: S3Client, key: str, full_key: str, chunks: AsyncIterator[bytes], content_type: str
    ) -> None:
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []

        async def upload_part(body: bytes) -> None:
            nonlocal upload_id
            if upload_id is None:
                created = await client.create_multipart_upload(
                    Bucket=self._bucket, Key=full_key, ContentType=content_type
                )
                upload_id = created["UploadId"]
            number = len(parts) + 1
            if number > _MAX_PARTS:
                raise StorageError(f"upload of {key!r} exceeds {_MAX_PARTS} parts: raise part_size")
            uploaded = await client.upload_part(
                Bucket=self._bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=body
            )
            parts.append({"ETag": uploaded["ETag"], "PartNumber": number})

        try:
            with self._errors("put", key):
                async for chunk in chunks:
                    buffer += chunk
                    if len(buffer) >= self._part_size:
                        body, buffer = bytes(buffer), bytearray()
                        await upload_part(body)
                if upload_id is None:
                    # Smaller than one part: a plain PUT is one request instead of three.
                    await client.put_object(
                        Bucket=self._bucket, Key=full_key, Body=bytes(buffer), ContentType=content_type
                    )
                    return
                if buffer:
                    await upload_part(bytes(buffer))
                # The object appears only now, whole: readers never see a partial upload.
                await client.complete_multipart_upload(
                    Bucket=self._bucket, Key=full_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # Also on cancellation: uploaded parts are stored (and billed) until aborted.
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await client.abort_multipart_upload(Bucket=self._bucket, Key=full_key, UploadId=upload_id)
            raise

    # -- reading ------------------------------------------------------------------------------

    @outside_call
    async def get(self, key: str) -> bytes:
        full_key = self._full_key(key)
        client = await self._get_client()
        with self._errors("get", key):
            response = await client.get_object(Bucket=self._bucket, Key=full_key)
            body = response["Body"]
            async with body:
                return await body.read()

    async def stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        full_key = self._full_key(key)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        client = await self._get_client()
        with self._errors("get", key):
            response = await client.get_object(Bucket=self._bucket, Key=full_key)
        body = response["Body"]
        # Leaving the block releases the connection, also when the reader stops early.
        async with body:
            while True:
                # Not under _errors(): a ClientError raised by the consumer at the yield is theirs.
                try:
                    chunk = await body.read(chunk_size)
                except (ClientError, BotoCoreError) as exc:
                    self._fail("get", key, exc)
                if not chunk:
                    return
                yield chunk

    async def _head(self, key: str) -> int | None:
        """The object's size, or None if there is no object."""
        full_key = self._full_key(key)
        client = await self._get_client()
        try:
            with self._errors("head", key):
                response = await client.head_object(Bucket=self._bucket, Key=full_key)
        except ObjectNotFoundError:
            return None
        return response["ContentLength"]

    @outside_call
    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    @outside_call
    async def size(self, key: str) -> int:
        size = await self._head(key)
        if size is None:
            raise ObjectNotFoundError(key)
        return size

    # -- deleting -----------------------------------------------------------------------------

    @outside_call
    async def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        client = await self._get_client()
        with self._errors("delete", key):
            # S3 answers 204 for a missing key as well, so deleting twice is fine.
            await client.delete_object(Bucket=self._bucket, Key=full_key)

    @outside_call
    async def delete_prefix(self, prefix: str) -> int:
        prefix = validate_prefix(prefix)
        # The trailing slash makes the prefix a folder: "users/1" never matches "users/10/...".
        full_prefix = self._prefix + prefix + "/"
        client = await self._get_client()
        count = 0
        with self._errors("delete_prefix", prefix):
            paginator = client.get_paginator("list_objects_v2")
            # Pages hold at most 1000 keys, which is also delete_objects' batch limit.
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=full_prefix):
                objects: list[ObjectIdentifierTypeDef] = [
                    {"Key": item["Key"]} for item in page.get("Contents", [])
                ]
                if not objects:
                    continue
                response = await client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True}
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"S3 refused to delete {len(errors)} object(s) under {prefix!r} in bucket "
                        f"{self._bucket!r}: {first.get('Code', '')} {first.get('Key', '')!r}"
                    )
                count += len(objects)
        return count

    # -- links and setup ----------------------------------------------------------------------

    async def url(self, key: str, *, expires_in: int) -> str:
        """A link FAL (or anyone outside) can GET the object from; it grants access: don't log it.

        Raises StorageError when the bucket has no public address and no signed links are configured.
        """
        full_key = self._full_key(key)
        validate_expires_in(expires_in)
        if self._public_endpoint_url is None:
            if self._url_signer is None:
                raise StorageError(
                    "the bucket has no public URL: set S3_PUBLIC_ENDPOINT_URL or PUBLIC_BASE_URL"
                )
            return self._url_signer(key, expires_in)
        presigner = await self._get_presigner(self._public_endpoint_url)
        with self._errors("presign", key):
            return await presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": full_key}, ExpiresIn=expires_in
            )

    async def ensure_bucket(self) -> None:
        """Create the bucket if it doesn't exist (MinIO and development setups)."""
        client = await self._get_client()
        try:
            await client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NO_BUCKET_CODES:
                raise StorageError(f"cannot reach S3 bucket {self._bucket!r}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach S3 bucket {self._bucket!r}: {exc}") from exc
        region = client.meta.region_name
        try:
            if region and region != "us-east-1":
                # Outside us-east-1 S3 wants the region spelled out again.
                await client.create_bucket(
                    Bucket=self._bucket,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", region)
                    },
                )
            else:
                await client.create_bucket(Bucket=self._bucket)
        except ClientError as exc:
            # Another process may have created it meanwhile.
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou",):
                raise StorageError(f"cannot create S3 bucket {self._bucket!r}: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot create S3 bucket {self._bucket!r}: {exc}") from exc
