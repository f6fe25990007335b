"""A local Bot API server's files: read only inside the mounted folder, only with room on disk."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from aisha.bot.local_files import LocalBotApiFolder, UnsafeFilePath, local_folder
from aisha.bot.messenger import BotMessenger
from aisha.config import ConfigError, load_settings
from aisha.messaging import FileTooLarge, NotEnoughRoom
from aisha.sandbox import FakeTelegramServer

MB = 1024 * 1024
TOKEN = "123456:SECRET"


def folder(
    mounted: Path, *, server: str = "/var/lib/telegram-bot-api", **kwargs: object
) -> LocalBotApiFolder:
    values: dict[str, object] = {"max_bytes": 100 * MB, "min_free_bytes": 10 * MB}
    values.update(kwargs)
    return LocalBotApiFolder(mounted=mounted, server=PurePosixPath(server), **values)  # type: ignore[arg-type]


def put(mounted: Path, relative: str, content: bytes = b"RIFF") -> Path:
    path = mounted / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_server_path_is_read_where_the_folder_is_mounted(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    put(mounted, f"{TOKEN}/music/file_3.wav")

    found = folder(mounted).resolve(f"/var/lib/telegram-bot-api/{TOKEN}/music/file_3.wav")

    assert found == (mounted / TOKEN / "music" / "file_3.wav").resolve()


@pytest.mark.parametrize(
    "path",
    [
        f"/var/lib/telegram-bot-api/{TOKEN}/../../../../etc/passwd",  # climbs out
        "/etc/passwd",  # another prefix
        "/var/lib/telegram-bot-api-other/x",  # a prefix that only starts the same
        f"{TOKEN}/music/file_3.wav",  # relative
        f"/var/lib/telegram-bot-api/{TOKEN}/music/missing.wav",
        f"/var/lib/telegram-bot-api/{TOKEN}/music",  # a folder
    ],
)
def test_paths_that_do_not_lead_to_a_file_inside_are_refused(tmp_path: Path, path: str) -> None:
    mounted = tmp_path / "mounted"
    put(mounted, f"{TOKEN}/music/file_3.wav")
    (tmp_path / "etc").mkdir()

    with pytest.raises(UnsafeFilePath) as error:
        folder(mounted).resolve(path)
    assert TOKEN not in str(error.value)  # the message is logged: it never holds the token


def test_a_symlink_leading_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    secret = put(tmp_path / "outside", "secret.txt", b"not for users")
    (mounted / TOKEN).mkdir(parents=True)
    (mounted / TOKEN / "documents").symlink_to(secret.parent)

    with pytest.raises(UnsafeFilePath, match="leads out"):
        folder(mounted).resolve(f"/var/lib/telegram-bot-api/{TOKEN}/documents/secret.txt")


def test_a_symlink_that_stays_inside_is_followed(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    real = put(mounted, f"{TOKEN}/music/file_1.mp3")
    (mounted / TOKEN / "latest.mp3").symlink_to(real)

    assert folder(mounted).resolve(f"/var/lib/telegram-bot-api/{TOKEN}/latest.mp3") == real.resolve()


def test_room_is_needed_on_the_servers_disk_and_ours(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    free = {"bytes": 200 * MB}
    checked: list[Path] = []

    def disk_free(path: Path) -> int:
        checked.append(path)
        return free["bytes"]

    rules = folder(mounted, disk_free=disk_free)
    # Both folders are on one disk here: it must take the server's file and our copy, and keep
    # 10 MB free after them.
    rules.check_room(95 * MB, work_dir=tmp_path)
    assert checked == [mounted]
    with pytest.raises(NotEnoughRoom) as error:
        rules.check_room(96 * MB, work_dir=tmp_path)
    assert (error.value.size, error.value.free, error.value.needed) == (96 * MB, 200 * MB, 202 * MB)
    # Once the server has fetched it, only our copy needs room.
    rules.check_room(190 * MB, work_dir=tmp_path, fetched=True)
    free["bytes"] = 5 * MB
    with pytest.raises(NotEnoughRoom):
        rules.check_room(1, work_dir=tmp_path, fetched=True)


def test_a_copy_stops_at_the_cap(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    source = put(mounted, "big.wav", b"x" * (2 * MB + 1))
    rules = folder(mounted, max_bytes=2 * MB)

    with pytest.raises(FileTooLarge) as error:
        rules.copy(source, tmp_path / "work" / "copy.wav")
    assert error.value.limit == 2 * MB and error.value.public_api is False
    assert rules.copy(put(mounted, "ok.wav", b"y" * MB), tmp_path / "work" / "ok.wav") == MB
    assert (tmp_path / "work" / "ok.wav").read_bytes() == b"y" * MB


def test_settings_build_the_folder_and_refuse_local_mode_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert local_folder(load_settings()) is None
    with pytest.raises(ConfigError, match="TELEGRAM_API_LOCAL_DIR"):
        load_settings(telegram_api_local=True)
    with pytest.raises(ConfigError, match="absolute"):
        load_settings(telegram_api_local=True, telegram_api_local_dir="relative/dir")
    with pytest.raises(ConfigError, match="TELEGRAM_API_SERVER_DIR"):
        load_settings(
            telegram_api_local=True, telegram_api_local_dir=str(tmp_path), telegram_api_server_dir="x"
        )

    built = local_folder(
        load_settings(
            telegram_api_local=True,
            telegram_api_local_dir=str(tmp_path),
            telegram_api_server_dir="/var/lib/telegram-bot-api",
            telegram_api_local_max_file_mb=50,
            telegram_api_local_min_free_mb=0,
        )
    )
    assert built is not None
    assert (built.mounted, built.server) == (tmp_path, PurePosixPath("/var/lib/telegram-bot-api"))
    assert (built.max_bytes, built.min_free_bytes) == (50 * MB, 0)
    default = local_folder(load_settings(telegram_api_local=True, telegram_api_local_dir=str(tmp_path)))
    assert default is not None
    assert default.server == PurePosixPath(str(tmp_path)) and default.max_bytes == 2000 * MB


def _bot(server: FakeTelegramServer) -> Bot:
    return Bot(server.token, session=AiohttpSession(api=TelegramAPIServer.from_base(server.base_url)))


async def test_the_public_bot_api_refusing_a_file_over_20_mb_is_file_too_large(tmp_path: Path) -> None:
    async with FakeTelegramServer() as server:
        bot = _bot(server)
        try:
            file_id, _ = server.register_file(b"x" * (20 * MB + 1), file_path_hint="documents/a.pdf")
            server.expect_refusal("getFile", "file is too big")
            with pytest.raises(FileTooLarge) as error:
                await BotMessenger(bot).download(file_id, tmp_path / "a.pdf")
            assert error.value.limit == 20 * MB and error.value.public_api
            assert not (tmp_path / "a.pdf").exists()
        finally:
            await bot.session.close()
        assert server.unexpected_refusals() == []


async def test_a_local_servers_file_is_copied_from_the_mounted_folder(tmp_path: Path) -> None:
    mounted = tmp_path / "mounted"
    content = b"y" * (21 * MB)
    async with FakeTelegramServer(local_dir=mounted, local_server_dir="/var/lib/telegram-bot-api") as server:
        bot = _bot(server)
        try:
            messenger = BotMessenger(bot, local_files=folder(mounted, max_bytes=30 * MB, min_free_bytes=0))
            file_id, _ = server.register_file(content, file_path_hint="music/long.mp3")
            assert await messenger.download(file_id, tmp_path / "work" / "long.mp3") == len(content)
            assert (tmp_path / "work" / "long.mp3").read_bytes() == content
            assert server.downloads == []

            over, _ = server.register_file(b"z" * (31 * MB), file_path_hint="music/longer.mp3")
            with pytest.raises(FileTooLarge) as error:
                await messenger.download(over, tmp_path / "work" / "longer.mp3")
            assert error.value.limit == 30 * MB and not error.value.public_api
            with pytest.raises(FileTooLarge):
                await messenger.check_download(31 * MB)  # what the handler asks, before getFile

            # The caller's own limit (a photo's 20 MB) holds in local mode too: nothing is copied.
            with pytest.raises(FileTooLarge) as error:
                await messenger.download(file_id, tmp_path / "work" / "photo.jpg", max_bytes=20 * MB)
            assert error.value.limit == 20 * MB and not (tmp_path / "work" / "photo.jpg").exists()
        finally:
            await bot.session.close()
