"""Files of a local Bot API server (`telegram-bot-api --local`), read from its folder.

In local mode `getFile` has the server fetch the file from Telegram into its `--dir` and answers
with the file's absolute path there (no HTTP download). Our processes see that folder where it is
mounted for them (TELEGRAM_API_LOCAL_DIR): a path is mapped from the server's prefix
(TELEGRAM_API_SERVER_DIR) to ours and read only if it really lies inside the mounted folder, since
it comes from across the network: `..`, symlinks and anything else leading out are refused.

Before a file is taken, both disks it will land on (the server's folder, where getFile writes it,
and our work folder, where it is copied) must keep TELEGRAM_API_LOCAL_MIN_FREE_MB free after it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from aisha.config import Settings
from aisha.messaging import FileTooLarge, NotEnoughRoom

log = structlog.get_logger(__name__)
MB = 1024 * 1024
COPY_CHUNK = MB


class UnsafeFilePath(Exception):
    """A path from the Bot API server that doesn't lead to a file inside the mounted folder."""


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class LocalBotApiFolder:
    mounted: Path  # the server's --dir as our processes see it
    server: PurePosixPath  # the server's --dir as the server sees it (the prefix of its paths)
    max_bytes: int
    min_free_bytes: int
    disk_free: Callable[[Path], int] = disk_free

    def resolve(self, file_path: str) -> Path:
        """The file on our side; raises UnsafeFilePath (the message never holds the path: it
        holds the bot token)."""
        server_path = PurePosixPath(file_path)
        if not server_path.is_absolute() or ".." in server_path.parts:
            raise UnsafeFilePath("not an absolute path without '..'")
        try:
            relative = server_path.relative_to(self.server)
        except ValueError:
            raise UnsafeFilePath(f"not under TELEGRAM_API_SERVER_DIR ({self.server})") from None
        try:
            local = (self.mounted / relative).resolve(strict=True)  # follows every symlink
        except (OSError, RuntimeError):
            raise UnsafeFilePath(f"no such file under TELEGRAM_API_LOCAL_DIR ({self.mounted})") from None
        if not local.is_relative_to(self.mounted.resolve()):
            raise UnsafeFilePath(f"leads out of TELEGRAM_API_LOCAL_DIR ({self.mounted})")
        if not local.is_file():
            raise UnsafeFilePath("not a regular file")
        return local

    def check_room(self, size: int, *, work_dir: Path, fetched: bool = False) -> None:
        """Raise NotEnoughRoom unless `size` more bytes on each disk leave min_free_bytes free:
        on the server's folder (unless `fetched`: the file is there already) and on `work_dir`
        (the copy). One disk holding both needs room for both."""
        places = [work_dir] if fetched else [self.mounted, work_dir]
        needed: dict[int, tuple[Path, int]] = {}
        for place in places:
            device = os.stat(place).st_dev
            path, total = needed.get(device, (place, 0))
            needed[device] = (path, total + size)
        for path, total in needed.values():
            free = self.disk_free(path)
            if free - total < self.min_free_bytes:
                # The operator's to fix: the user is only told to try later.
                log.error("telegram.local_disk_full", path=str(path), size=size, free=free)
                raise NotEnoughRoom(size=size, free=free, needed=total + self.min_free_bytes)

    def copy(self, source: Path, destination: Path) -> int:
        """Copy at most max_bytes (a file that grew past them is refused); returns the size."""
        copied = 0
        destination.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as reader, destination.open("wb") as writer:
            while chunk := reader.read(COPY_CHUNK):
                copied += len(chunk)
                if copied > self.max_bytes:
                    raise FileTooLarge(copied, self.max_bytes, public_api=False)
                writer.write(chunk)
        return copied


def local_folder(settings: Settings) -> LocalBotApiFolder | None:
    """The local Bot API server's folder from the settings; None on the public Bot API."""
    if not settings.telegram_api_local:
        return None
    assert settings.telegram_api_local_dir is not None  # the settings refuse local mode without it
    mounted = settings.telegram_api_local_dir
    return LocalBotApiFolder(
        mounted=mounted,
        server=PurePosixPath(settings.telegram_api_server_dir or str(mounted)),
        max_bytes=settings.telegram_api_local_max_file_mb * MB,
        min_free_bytes=settings.telegram_api_local_min_free_mb * MB,
    )
