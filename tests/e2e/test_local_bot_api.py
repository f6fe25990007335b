"""Large files through a local Bot API server: getFile answers with an absolute path under the
server's --dir, which the bot reads where that folder is mounted for it; the cap and the free-disk
check refuse before anything is fetched, and a path leading out of the folder is never read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aisha.billing.models import CreditHold, EntryKind, HoldStatus
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.openai import FakeOpenAIServer
from aisha.transcription.models import Transcript
from tests.conftest import Database
from tests.e2e.conftest import check_refusals, count, eventually
from tests.media import large_wav

# The server's --dir as the server names it (its container); the bot reads it at `mounted`.
SERVER_DIR = "/var/lib/telegram-bot-api"
MB = 1024 * 1024


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return large_wav(tmp_path_factory.mktemp("large") / "meeting.wav").read_bytes()


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    path = tmp_path / "bot-api"
    path.mkdir()
    return path


@pytest.fixture
async def telegram(mounted: Path) -> AsyncIterator[FakeTelegramServer]:
    """A local Bot API server writing into `mounted` and naming it SERVER_DIR."""
    async with FakeTelegramServer(local_dir=mounted, local_server_dir=SERVER_DIR) as server:
        yield server
    check_refusals(server)


@pytest.fixture
async def speech() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key="sk-test-local-api") as server:
        server.transcripts = ["Minutes of the long meeting."]
        yield server


@pytest.fixture
def start(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], speech: FakeOpenAIServer, mounted: Path
) -> Callable[..., Any]:
    async def start(**overrides: Any) -> Runtime:
        values: dict[str, Any] = {
            "openai_api_key": "sk-test-local-api",
            "openai_base_url": speech.base_url,
            "telegram_api_local": True,
            "telegram_api_local_dir": str(mounted),
            "telegram_api_server_dir": SERVER_DIR,
            "telegram_api_local_min_free_mb": 0,
        }
        values.update(overrides)
        runtime: Runtime = await start_app(make_settings(**values))
        return runtime

    return start


async def _fund(runtime: Runtime, telegram: FakeTelegramServer, user: FakeUser, amount: int) -> None:
    telegram.queue_update(telegram.message_update(user, "/start"))
    await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == user.id)

    async def registered() -> bool:
        async with runtime.services.sessions() as session:
            return await runtime.services.users.get(session, telegram_id=user.id) is not None

    await eventually(registered)
    async with unit_of_work(runtime.services.sessions) as session:
        await runtime.services.ledger.credit(
            session=session, user_id=user.id, amount=amount, key=f"fund:{user.id}", kind=EntryKind.BONUS
        )


async def _balance(runtime: Runtime, user_id: int) -> int:
    async with runtime.services.sessions() as session:
        return await runtime.services.ledger.get_balance(session=session, user_id=user_id)


async def _transcript(db: Database, user_id: int) -> Transcript | None:
    async with db.sessions() as session:
        row: Transcript | None = await session.scalar(select(Transcript).where(Transcript.user_id == user_id))
        return row


def _send(telegram: FakeTelegramServer, user: FakeUser, recording: bytes) -> None:
    telegram.queue_update(telegram.message_update(user, document=(recording, "meeting.wav", "audio/wav")))


async def _reply(telegram: FakeTelegramServer, user: FakeUser, words: str) -> str:
    # 60 MB goes through the fake server, disk and ffmpeg: slower than a voice note on a busy machine.
    call = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and words in c.params["text"], timeout=60
    )
    return str(call.params["text"])


async def _shown(telegram: FakeTelegramServer, user: FakeUser, words: str) -> str:
    """The bot's message to `user` holding `words`, sent or edited into the job's status message."""
    found: list[str] = []

    async def shown() -> bool:
        found[:] = [
            str(m["text"])
            for m in telegram.chat_messages(user.id)
            if m.get("from", {}).get("is_bot") and words in str(m.get("text", ""))
        ]
        return bool(found)

    await eventually(shown, timeout=30)
    return found[-1]


async def test_a_60_mb_recording_is_read_from_the_mounted_folder_and_transcribed(
    telegram: FakeTelegramServer,
    start: Callable[..., Any],
    db: Database,
    recording: bytes,
    speech: FakeOpenAIServer,
    mounted: Path,
) -> None:
    assert len(recording) > 60 * MB
    app = await start()
    user = FakeUser(id=7601, language_code="en")
    await _fund(app, telegram, user, 10)

    _send(telegram, user, recording)

    assert await _reply(telegram, user, "Minutes") == "Minutes of the long meeting."

    async def succeeded() -> bool:
        row = await _transcript(db, user.id)
        return row is not None and row.status == JobStatus.SUCCEEDED

    await eventually(succeeded, timeout=30)
    row = await _transcript(db, user.id)
    assert row is not None and row.price == 1 and row.duration_ms in range(40_900, 41_100)
    assert await _balance(app, user.id) == 9
    async with db.sessions() as session:
        hold = await session.get(CreditHold, row.hold_id)
    assert hold is not None and hold.status == HoldStatus.CAPTURED and hold.captured_amount == 1
    # The file came from the server's folder, not over HTTP.
    [fetched] = telegram.calls_of("getFile")
    assert fetched.result["file_path"].startswith(f"{SERVER_DIR}/{telegram.token}/documents/")
    assert telegram.downloads == []
    assert len(speech.transcription_calls) == 1


async def test_a_file_over_the_cap_is_refused_before_the_server_fetches_it(
    telegram: FakeTelegramServer, start: Callable[..., Any], db: Database, recording: bytes, mounted: Path
) -> None:
    app = await start(telegram_api_local_max_file_mb=50)
    user = FakeUser(id=7602, language_code="ru")
    await _fund(app, telegram, user, 10)

    _send(telegram, user, recording)

    text = await _reply(telegram, user, "Файл слишком большой")
    assert text == (
        "Файл слишком большой: я принимаю файлы не больше 50 МБ. Отправьте запись покороче или сожмите её."
        " Оплата не списана."
    )
    await telegram.wait_until_handled()
    assert telegram.calls_of("getFile") == [] and list(mounted.iterdir()) == []
    assert await _transcript(db, user.id) is None
    assert await _balance(app, user.id) == 10


async def test_without_room_on_disk_the_file_is_refused_and_nothing_starts(
    telegram: FakeTelegramServer, start: Callable[..., Any], db: Database, recording: bytes, mounted: Path
) -> None:
    # No disk has a petabyte free: whatever this machine has, the file doesn't fit.
    app = await start(telegram_api_local_min_free_mb=1024**3)
    user = FakeUser(id=7603, language_code="en")
    await _fund(app, telegram, user, 10)

    _send(telegram, user, recording)

    text = await _reply(telegram, user, "disk space")
    assert text == (
        "I can't take a file this large right now: the server is short of disk space."
        " Please try again later. Nothing was charged."
    )
    await telegram.wait_until_handled()
    assert telegram.calls_of("getFile") == [] and list(mounted.iterdir()) == []
    assert await _transcript(db, user.id) is None
    assert await _balance(app, user.id) == 10


async def test_a_path_leading_out_of_the_mounted_folder_is_never_read(
    telegram: FakeTelegramServer,
    start: Callable[..., Any],
    db: Database,
    recording: bytes,
    speech: FakeOpenAIServer,
    mounted: Path,
    tmp_path: Path,
) -> None:
    # Someone with a hand in the server's folder points its documents folder elsewhere.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (mounted / telegram.token).mkdir()
    (mounted / telegram.token / "documents").symlink_to(outside)
    app = await start()
    user = FakeUser(id=7604, language_code="en")
    await _fund(app, telegram, user, 10)

    _send(telegram, user, recording)

    text = await _shown(telegram, user, "couldn't download")
    assert text == "I couldn't download this file from Telegram. Nothing was charged; please send it again."

    async def failed() -> bool:
        row = await _transcript(db, user.id)
        return row is not None and row.status == JobStatus.FAILED

    await eventually(failed)
    assert [p.name for p in outside.iterdir()] != []  # the server wrote it there; the bot refused it
    assert speech.transcription_calls == []
    assert await _balance(app, user.id) == 10
    assert await count(db, CreditHold, CreditHold.user_id == user.id) == 0
