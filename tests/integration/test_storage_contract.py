"""The behaviour every ObjectStorage backend must share: the same tests on local disk and on S3."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from aisha.storage import InvalidKeyError, ObjectNotFoundError, ObjectStorage

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> ObjectStorage:
    """The same test on the local disk backend and on the S3 backend (moto server)."""
    backend: ObjectStorage = request.getfixturevalue(f"{request.param}_storage")
    return backend


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(storage: ObjectStorage, key: str, chunk_size: int = 64 * 1024) -> list[bytes]:
    return [chunk async for chunk in storage.stream(key, chunk_size=chunk_size)]


def test_backend_satisfies_the_protocol(storage: ObjectStorage) -> None:
    assert isinstance(storage, ObjectStorage)


async def test_put_then_get_returns_the_same_bytes(storage: ObjectStorage) -> None:
    photo = payload(300_000)
    await storage.put("avatars/42/photo-01.jpg", photo, content_type="image/jpeg")

    assert await storage.get("avatars/42/photo-01.jpg") == photo


async def test_put_replaces_an_existing_object(storage: ObjectStorage) -> None:
    await storage.put("generations/7/result.png", b"first version")
    await storage.put("generations/7/result.png", b"second")

    assert await storage.get("generations/7/result.png") == b"second"
    assert await storage.size("generations/7/result.png") == len(b"second")


async def test_empty_objects_are_objects(storage: ObjectStorage) -> None:
    await storage.put("empty/bytes", b"")
    await storage.put("empty/stream", chunked(b"", 1))

    for key in ("empty/bytes", "empty/stream"):
        assert await storage.exists(key)
        assert await storage.size(key) == 0
        assert await storage.get(key) == b""
        assert await read_all(storage, key) == []


async def test_streaming_put_and_get_of_12_mib(storage: ObjectStorage) -> None:
    audio = payload(12 * MIB)
    # An odd chunk size, so chunks never line up with parts or write buffers.
    await storage.put("transcriptions/5/voice.ogg", chunked(audio, 1_000_003), content_type="audio/ogg")

    assert await storage.size("transcriptions/5/voice.ogg") == len(audio)
    chunks = await read_all(storage, "transcriptions/5/voice.ogg", chunk_size=256 * 1024)
    assert b"".join(chunks) == audio
    assert all(0 < len(chunk) <= 256 * 1024 for chunk in chunks)
    assert len(chunks) >= 48  # 12 MiB / 256 KiB: read in pieces, never as one blob


async def test_a_failed_streaming_put_keeps_the_previous_object(storage: ObjectStorage) -> None:
    await storage.put("avatars/1/photo.jpg", b"the good photo")

    async def interrupted() -> AsyncIterator[bytes]:
        yield payload(9 * MIB)  # more than one S3 part, so a multipart upload is under way
        raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError, match="upload interrupted"):
        await storage.put("avatars/1/photo.jpg", interrupted())
    with pytest.raises(RuntimeError, match="upload interrupted"):
        await storage.put("avatars/1/other.jpg", interrupted())

    assert await storage.get("avatars/1/photo.jpg") == b"the good photo"
    assert not await storage.exists("avatars/1/other.jpg")


async def test_concurrent_puts_leave_one_whole_version(storage: ObjectStorage) -> None:
    versions = [payload(MIB, seed=n) for n in range(5)]

    await asyncio.gather(*(storage.put("shared/key.bin", chunked(v, 100_000)) for v in versions))

    assert await storage.get("shared/key.bin") in versions


async def test_exists_and_size(storage: ObjectStorage) -> None:
    assert not await storage.exists("a/b.txt")

    await storage.put("a/b.txt", b"12345")

    assert await storage.exists("a/b.txt")
    assert await storage.size("a/b.txt") == 5
    assert not await storage.exists("a")  # a folder is not an object
    assert not await storage.exists("a/b")


async def test_missing_object_raises_not_found(storage: ObjectStorage) -> None:
    with pytest.raises(ObjectNotFoundError):
        await storage.get("no/such/object")
    with pytest.raises(ObjectNotFoundError):
        await read_all(storage, "no/such/object")
    with pytest.raises(ObjectNotFoundError):
        await storage.size("no/such/object")


async def test_delete_is_idempotent(storage: ObjectStorage) -> None:
    await storage.put("tmp/upload.bin", b"x")

    await storage.delete("tmp/upload.bin")
    await storage.delete("tmp/upload.bin")
    await storage.delete("never/existed")

    assert not await storage.exists("tmp/upload.bin")
    with pytest.raises(ObjectNotFoundError):
        await storage.get("tmp/upload.bin")


async def test_delete_prefix_erases_one_users_folder_only(storage: ObjectStorage) -> None:
    mine = ["users/1/avatar/a.jpg", "users/1/avatar/b.jpg", "users/1/gen/deep/c.png"]
    others = ["users/10/a.jpg", "users/2/a.jpg", "users1/a.jpg"]
    for key in mine + others:
        await storage.put(key, key.encode())

    assert await storage.delete_prefix("users/1") == len(mine)

    for key in mine:
        assert not await storage.exists(key)
    for key in others:
        assert await storage.get(key) == key.encode()
    assert await storage.delete_prefix("users/1") == 0
    assert await storage.delete_prefix("users/10/") == 1  # a trailing slash means the same folder
    assert await storage.delete_prefix("nobody/here") == 0


async def test_delete_prefix_of_more_than_one_s3_page(storage: ObjectStorage) -> None:
    # list_objects_v2 and delete_objects work in pages of 1000.
    await asyncio.gather(*(storage.put(f"bulk/{n:04d}", b"") for n in range(1005)))

    assert await storage.delete_prefix("bulk") == 1005
    assert not await storage.exists("bulk/0000")


async def test_stopping_a_stream_early_releases_it(storage: ObjectStorage) -> None:
    await storage.put("big/file.bin", payload(2 * MIB))

    for _ in range(20):  # a leaked connection or file handle per early stop would pile up
        chunks = storage.stream("big/file.bin", chunk_size=1024)
        assert len(await anext(chunks)) <= 1024
        await chunks.aclose()  # type: ignore[attr-defined]

    assert await storage.get("big/file.bin") == payload(2 * MIB)


UNSAFE_KEYS = ["", "../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a/", "a\\b", "a\x00b", "ä", "x" * 1025]


@pytest.mark.parametrize("key", UNSAFE_KEYS)
async def test_every_method_refuses_unsafe_keys(storage: ObjectStorage, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        await storage.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        await storage.put(key, chunked(b"x", 1))
    with pytest.raises(InvalidKeyError):
        await storage.get(key)
    with pytest.raises(InvalidKeyError):
        await read_all(storage, key)
    with pytest.raises(InvalidKeyError):
        await storage.exists(key)
    with pytest.raises(InvalidKeyError):
        await storage.size(key)
    with pytest.raises(InvalidKeyError):
        await storage.delete(key)
    with pytest.raises(InvalidKeyError):
        await storage.url(key, expires_in=60)
    if key != "a/":  # "a/" is a valid folder prefix
        with pytest.raises(InvalidKeyError):
            await storage.delete_prefix(key)


async def test_delete_prefix_refuses_to_erase_everything(storage: ObjectStorage) -> None:
    await storage.put("keep/me", b"x")

    for prefix in ("", "/"):
        with pytest.raises(InvalidKeyError):
            await storage.delete_prefix(prefix)

    assert await storage.exists("keep/me")


async def test_the_source_streams_own_error_passes_through(storage: ObjectStorage) -> None:
    async def dropped_download() -> AsyncIterator[bytes]:
        yield b"partial"
        raise ConnectionResetError("telegram download dropped")

    with pytest.raises(ConnectionResetError, match="telegram download dropped"):
        await storage.put("voice/1/a.ogg", dropped_download())

    assert not await storage.exists("voice/1/a.ogg")
