"""Object storage in a folder on the local disk: the embedded default (``file://./data/files``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from aisha.db.session import outside_call
from aisha.storage.base import (
    DEFAULT_CHUNK_SIZE,
    InvalidKeyError,
    ObjectNotFoundError,
    StorageError,
    validate_expires_in,
    validate_key,
    validate_prefix,
)

# Temporary files end in "~tmp": "~" is not allowed in keys, so they never collide with an object.
_TEMP_SUFFIX = "~tmp"
# Chunks from a streamed upload are gathered up to this size before one write in a worker thread,
# so a stream of tiny chunks doesn't cost one thread hop each.
_WRITE_BUFFER_SIZE = 1024 * 1024
# Errors meaning "no regular file at this path" (a folder, or a file where a folder was expected).
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class LocalStorage:
    """Files under ``root``, one file per key (``a/b.jpg`` → ``root/a/b.jpg``).

    Writes are atomic: data goes to a temporary file in the target folder, is flushed to disk and
    then renamed over the target, so a reader sees the old object or the new one, never a part.
    All file I/O runs in worker threads. ``content_type`` is accepted and ignored: files carry
    no metadata. ``url()`` delegates to ``url_signer(key, expires_in)`` (signed links served by the
    HTTP app); without one the local storage has no URL.
    """

    def __init__(self, root: Path, *, url_signer: Callable[[str, int], str] | None = None) -> None:
        # Resolved once so the containment check compares real paths (root may itself be a symlink).
        self._root = Path(root).resolve()
        self._url_signer = url_signer

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self._root)!r})"

    # -- paths (called in worker threads: resolve() touches the filesystem) ---------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        resolved = self._root.joinpath(*key.split("/")).resolve()
        # validate_key already rules out "..", this also catches symlinks pointing outside root.
        if resolved == self._root or not resolved.is_relative_to(self._root):
            raise InvalidKeyError(f"object key {key!r} resolves outside the storage root")
        return resolved

    def _prune_empty_parents(self, path: Path) -> None:
        """Remove folders left empty above ``path``, up to (not including) the root."""
        parent = path.parent
        while parent != self._root and parent.is_relative_to(self._root):
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop here
                return
            parent = parent.parent

    # -- writing ------------------------------------------------------------------------------

    def _open_temp(self, key: str) -> tuple[Path, Path, BinaryIO]:
        target = self._path(key)
        for attempt in range(3):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX)
            except FileNotFoundError:
                # A concurrent delete pruned the empty folder between mkdir and mkstemp: make it again.
                if attempt == 2:
                    raise
                continue
            return target, Path(name), os.fdopen(fd, "wb")
        raise AssertionError("unreachable")

    @staticmethod
    def _commit(file: BinaryIO, temp: Path, target: Path) -> None:
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        os.replace(temp, target)

    @staticmethod
    def _discard(file: BinaryIO, temp: Path) -> None:
        with contextlib.suppress(OSError):
            file.close()
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)

    def _write_bytes(self, key: str, data: bytes) -> None:
        target, temp, file = self._open_temp(key)
        try:
            file.write(data)
            self._commit(file, temp, target)
        except BaseException:
            self._discard(file, temp)
            raise

    @outside_call
    async def put(
        self, key: str, data: bytes | AsyncIterator[bytes], *, content_type: str | None = None
    ) -> None:
        validate_key(key)
        try:
            if isinstance(data, bytes | bytearray | memoryview):
                await asyncio.to_thread(self._write_bytes, key, bytes(data))
                return
            target, temp, file = await asyncio.to_thread(self._open_temp, key)
        except OSError as exc:
            raise StorageError(f"cannot write object {key!r}: {exc.strerror or exc}") from exc

        try:
            buffer = bytearray()
            async for chunk in data:
                buffer += chunk
                if len(buffer) >= _WRITE_BUFFER_SIZE:
                    await self._write_io(key, file.write, buffer)
                    buffer = bytearray()
            if buffer:
                await self._write_io(key, file.write, buffer)
            await self._write_io(key, self._commit, file, temp, target)
        except BaseException:
            # Also on cancellation: the temporary file must not outlive a failed upload.
            # The source iterator's own errors (a dropped download, say) pass through unchanged.
            await asyncio.to_thread(self._discard, file, temp)
            raise

    @staticmethod
    async def _write_io(key: str, function: Callable[..., object], *args: object) -> None:
        try:
            await asyncio.to_thread(function, *args)
        except OSError as exc:
            raise StorageError(f"cannot write object {key!r}: {exc.strerror or exc}") from exc

    # -- reading ------------------------------------------------------------------------------

    def _read_bytes(self, key: str) -> bytes:
        with self._open_for_read(key) as file:
            return file.read()

    def _open_for_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            file = path.open("rb")
        except _ABSENT:
            raise ObjectNotFoundError(key) from None
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            file.close()
            raise ObjectNotFoundError(key)
        return file

    @outside_call
    async def get(self, key: str) -> bytes:
        validate_key(key)
        try:
            return await asyncio.to_thread(self._read_bytes, key)
        except OSError as exc:
            raise StorageError(f"cannot read object {key!r}: {exc.strerror or exc}") from exc

    async def stream(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        validate_key(key)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        try:
            file = await asyncio.to_thread(self._open_for_read, key)
        except OSError as exc:
            raise StorageError(f"cannot read object {key!r}: {exc.strerror or exc}") from exc
        try:
            while True:
                chunk = await asyncio.to_thread(file.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(file.close)

    def _stat(self, key: str) -> os.stat_result | None:
        try:
            result = self._path(key).stat()
        except _ABSENT:
            return None
        return result if stat.S_ISREG(result.st_mode) else None

    @outside_call
    async def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            return await asyncio.to_thread(self._stat, key) is not None
        except OSError as exc:
            raise StorageError(f"cannot check object {key!r}: {exc.strerror or exc}") from exc

    @outside_call
    async def size(self, key: str) -> int:
        validate_key(key)
        try:
            result = await asyncio.to_thread(self._stat, key)
        except OSError as exc:
            raise StorageError(f"cannot check object {key!r}: {exc.strerror or exc}") from exc
        if result is None:
            raise ObjectNotFoundError(key)
        return result.st_size

    # -- deleting -----------------------------------------------------------------------------

    def _delete_file(self, key: str) -> None:
        path = self._path(key)
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                return  # a folder is not an object: deleting "a" must not touch "a/b"
            path.unlink()
        except _ABSENT:
            return
        self._prune_empty_parents(path)

    @outside_call
    async def delete(self, key: str) -> None:
        validate_key(key)
        try:
            await asyncio.to_thread(self._delete_file, key)
        except OSError as exc:
            raise StorageError(f"cannot delete object {key!r}: {exc.strerror or exc}") from exc

    def _delete_tree(self, prefix: str) -> int:
        base = self._path(prefix)
        if not base.is_dir():
            return 0
        count = 0
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    # Temporary files of uploads in flight are removed too, but were never objects.
                    if not name.endswith(_TEMP_SUFFIX):
                        count += 1
            for name in dirnames:
                path = os.path.join(dirpath, name)
                # OSError: a file written meanwhile keeps its folder; that is not a failure here.
                with contextlib.suppress(OSError):
                    if os.path.islink(path):
                        os.unlink(path)  # the link only, never what it points to
                    else:
                        os.rmdir(path)
        with contextlib.suppress(OSError):
            base.rmdir()
        self._prune_empty_parents(base)
        return count

    @outside_call
    async def delete_prefix(self, prefix: str) -> int:
        prefix = validate_prefix(prefix)
        try:
            return await asyncio.to_thread(self._delete_tree, prefix)
        except OSError as exc:
            raise StorageError(f"cannot delete objects under {prefix!r}: {exc.strerror or exc}") from exc

    # -- links --------------------------------------------------------------------------------

    async def url(self, key: str, *, expires_in: int) -> str:
        validate_key(key)
        validate_expires_in(expires_in)
        if self._url_signer is None:
            raise StorageError(
                "local storage has no public URL: configure a URL signer (PUBLIC_BASE_URL) or use s3:// storage"
            )
        return self._url_signer(key, expires_in)

    async def aclose(self) -> None:
        """Nothing to release: files are opened and closed per call."""
