"""Fixtures for integration tests.

Object storage: the S3 backend runs against a real S3-protocol server over HTTP: moto's server,
started once per session on a free port on 127.0.0.1. Setting S3_TEST_ENDPOINT_URL (with
S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY and optionally S3_TEST_REGION) runs the same tests against
another server instead, such as MinIO.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aioboto3
import pytest
from aiobotocore.config import AioConfig

from aisha.storage import LocalStorage, S3Storage

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    is_moto: bool

    def storage(self, bucket: str, *, prefix: str = "", **kwargs: int) -> S3Storage:
        # Dummy credentials are passed explicitly, never through os.environ.
        return S3Storage(
            bucket,
            endpoint_url=self.endpoint_url,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            prefix=prefix,
            **kwargs,
        )

    def raw_client(self) -> ClientCreatorContext[S3Client]:
        """A plain aioboto3 client, for looking behind the storage's back."""
        session = aioboto3.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=self.region
        )
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=AioConfig(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    endpoint = os.environ.get("S3_TEST_ENDPOINT_URL")
    if endpoint:
        yield S3Server(
            endpoint_url=endpoint,
            access_key=os.environ.get("S3_TEST_ACCESS_KEY", "minioadmin"),
            secret_key=os.environ.get("S3_TEST_SECRET_KEY", "minioadmin"),
            region=os.environ.get("S3_TEST_REGION", "us-east-1"),
            is_moto=False,
        )
        return

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(
            endpoint_url=f"http://{host}:{port}",
            access_key="testing",
            secret_key="moto-secret-key",  # moto accepts any credentials
            region="us-east-1",
            is_moto=True,
        )
    finally:
        server.stop()


async def remove_bucket(server: S3Server, bucket: str) -> None:
    """Empty and delete a test bucket, including unfinished multipart uploads."""
    async with server.raw_client() as client:
        uploads = await client.list_multipart_uploads(Bucket=bucket)
        for upload in uploads.get("Uploads", []):
            await client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            objects: list[ObjectIdentifierTypeDef] = [
                {"Key": item["Key"]} for item in page.get("Contents", [])
            ]
            if objects:
                await client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        await client.delete_bucket(Bucket=bucket)


@pytest.fixture
async def s3_bucket(s3_server: S3Server) -> AsyncIterator[str]:
    """A fresh, empty bucket for one test, removed afterwards."""
    bucket = f"aisha-test-{uuid.uuid4().hex[:16]}"
    storage = s3_server.storage(bucket)
    try:
        await storage.ensure_bucket()
    finally:
        await storage.aclose()
    yield bucket
    await remove_bucket(s3_server, bucket)


@pytest.fixture
async def s3_storage(s3_server: S3Server, s3_bucket: str) -> AsyncIterator[S3Storage]:
    storage = s3_server.storage(s3_bucket)
    yield storage
    await storage.aclose()


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "files")
