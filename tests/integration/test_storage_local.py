"""What only the local disk backend does: files on disk, atomic writes, signed links."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aisha.storage import LocalStorage, ObjectNotFoundError, StorageError

MIB = 1024 * 1024


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")

    await storage.put("avatars/42/photo.jpg", b"jpeg")
    await storage.put("voice/1.ogg", chunked(b"ogg" * 1000, 7))

    assert (tmp_path / "files" / "avatars" / "42" / "photo.jpg").read_bytes() == b"jpeg"
    assert (tmp_path / "files" / "voice" / "1.ogg").read_bytes() == b"ogg" * 1000
    assert files_under(tmp_path / "files") == ["avatars/42/photo.jpg", "voice/1.ogg"]  # no temp files left


async def test_failed_upload_leaves_no_temporary_file(local_storage: LocalStorage) -> None:
    async def interrupted() -> AsyncIterator[bytes]:
        yield b"x" * (3 * MIB)
        raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError):
        await local_storage.put("uploads/1/video.mp4", interrupted())

    assert files_under(local_storage.root) == []


async def test_cancelled_upload_leaves_no_temporary_file(local_storage: LocalStorage) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * (2 * MIB)
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(local_storage.put("uploads/2/video.mp4", slow()))
    await started.wait()
    await asyncio.sleep(0.05)  # let the first write reach the temporary file
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert files_under(local_storage.root) == []


async def test_a_reader_never_sees_a_half_written_file(local_storage: LocalStorage) -> None:
    old, new = b"a" * (4 * MIB), b"b" * (4 * MIB)
    await local_storage.put("doc.bin", old)

    async def reader() -> set[bytes]:
        seen = set()
        for _ in range(30):
            data = await local_storage.get("doc.bin")
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())
            await asyncio.sleep(0)
        return seen

    reading = asyncio.create_task(reader())
    for _ in range(5):
        await local_storage.put("doc.bin", chunked(new, 100_000))
        await local_storage.put("doc.bin", chunked(old, 100_000))
    seen = await reading

    assert seen <= {b"aa4194304", b"bb4194304"}


async def test_the_event_loop_keeps_running_during_a_large_write(local_storage: LocalStorage) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await local_storage.put("big.bin", b"z" * (64 * MIB))
    ticking.cancel()

    # With the write on the loop's thread the ticker could not run at all while it lasted.
    assert ticks > 1


async def test_delete_removes_emptied_folders(local_storage: LocalStorage) -> None:
    await local_storage.put("users/1/avatars/a.jpg", b"a")
    await local_storage.put("users/2/b.jpg", b"b")

    await local_storage.delete("users/1/avatars/a.jpg")

    assert not (local_storage.root / "users" / "1").exists()  # no trace of user 1 left
    assert (local_storage.root / "users" / "2" / "b.jpg").exists()
    assert local_storage.root.is_dir()


async def test_delete_prefix_removes_the_folder_itself(local_storage: LocalStorage) -> None:
    await local_storage.put("users/1/a/b/c.jpg", b"c")
    await local_storage.put("users/1/d.jpg", b"d")

    assert await local_storage.delete_prefix("users/1") == 2

    assert not (local_storage.root / "users").exists()
    assert local_storage.root.is_dir()


async def test_delete_prefix_removes_symlinks_but_not_their_targets(
    local_storage: LocalStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_bytes(b"keep")
    await local_storage.put("users/1/a.jpg", b"a")
    (local_storage.root / "users" / "1" / "link").symlink_to(outside)

    assert await local_storage.delete_prefix("users/1") == 1

    assert (outside / "keep.txt").read_bytes() == b"keep"
    assert not (local_storage.root / "users").exists()


async def test_object_and_folder_of_the_same_name_conflict(local_storage: LocalStorage) -> None:
    await local_storage.put("a", b"file")

    with pytest.raises(StorageError):
        await local_storage.put("a/b", b"under a file")

    await local_storage.put("c/d", b"x")
    with pytest.raises(StorageError):
        await local_storage.put("c", b"over a folder")
    with pytest.raises(ObjectNotFoundError):
        await local_storage.get("c")
    await local_storage.delete("c")  # a folder is not an object: nothing deleted
    assert await local_storage.get("c/d") == b"x"
    assert files_under(local_storage.root) == ["a", "c/d"]


async def test_url_uses_the_injected_signer(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []

    def signer(key: str, expires_in: int) -> str:
        calls.append((key, expires_in))
        return f"https://bot.example/files/{key}?exp={expires_in}&sig=abc"

    storage = LocalStorage(tmp_path, url_signer=signer)

    assert await storage.url("generations/1/a.png", expires_in=600) == (
        "https://bot.example/files/generations/1/a.png?exp=600&sig=abc"
    )
    assert calls == [("generations/1/a.png", 600)]
    with pytest.raises(ValueError, match="expires_in"):
        await storage.url("generations/1/a.png", expires_in=0)


async def test_url_without_a_signer_is_a_clear_error(local_storage: LocalStorage) -> None:
    with pytest.raises(StorageError, match="local storage has no public URL"):
        await local_storage.url("a.png", expires_in=60)


async def test_root_is_created_on_first_write(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet" / "there"
    storage = LocalStorage(root)
    assert not await storage.exists("a")
    assert await storage.delete_prefix("a") == 0

    await storage.put("a", b"x")

    assert (root / "a").read_bytes() == b"x"
    await storage.aclose()  # nothing to release, but part of the contract
