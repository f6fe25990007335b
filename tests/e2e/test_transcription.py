"""Voice → progress → transcript delivered → credits captured once; failures never charge."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aisha.billing.models import CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fake_openai import FakeOpenAIServer
from aisha.transcription.audio import find_ffmpeg
from aisha.transcription.models import Transcript
from tests.conftest import Database
from tests.e2e.conftest import count, eventually


def _ffmpeg(*args: str, output: Path) -> bytes:
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args, str(output)], check=True
    )
    return output.read_bytes()


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 3-second Opus voice note (a tone: the fake speech API doesn't listen)."""
    path = tmp_path_factory.mktemp("voice") / "voice.ogg"
    return _ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "libopus", "-b:a", "24k", output=path
    )


@pytest.fixture(scope="module")
def silent_video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "video.mp4"
    return _ffmpeg(
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2", "-pix_fmt", "yuv420p", output=path
    )


@pytest.fixture
async def speech() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key="sk-test-transcription") as server:
        server.transcripts = ["Hello from the fake speech service. <b>Tags</b> stay text."]
        yield server


@pytest.fixture
async def app(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], speech: FakeOpenAIServer
) -> Runtime:
    settings = make_settings(
        openai_api_key="sk-test-transcription",
        openai_base_url=speech.base_url,
        transcription_max_attempts=3,
        transcription_retry_base_seconds=0.05,
    )
    runtime: Runtime = await start_app(settings)
    return runtime


async def _fund(runtime: Runtime, user: FakeUser, telegram: FakeTelegramServer, amount: int) -> None:
    telegram.queue_update(telegram.message_update(user, "/start"))
    await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == user.id)
    await eventually(lambda: _registered(runtime, user.id))
    if amount:
        async with unit_of_work(runtime.services.sessions) as session:
            await runtime.services.ledger.credit(
                session=session, user_id=user.id, amount=amount, key=f"fund:{user.id}", kind=EntryKind.BONUS
            )


async def _registered(runtime: Runtime, user_id: int) -> bool:
    async with runtime.services.sessions() as session:
        return await runtime.services.users.get(session, telegram_id=user_id) is not None


async def _balance(runtime: Runtime, user_id: int) -> int:
    async with runtime.services.sessions() as session:
        return await runtime.services.ledger.get_balance(session=session, user_id=user_id)


async def _final_status(telegram: FakeTelegramServer, user: FakeUser, prefix: str) -> str:
    """The status message's text once it starts with `prefix` (it is edited in place)."""
    for _ in range(250):
        for message in reversed(telegram.chat_messages(user.id)):
            text = str(message.get("text", ""))
            if message.get("from", {}).get("is_bot") and text.startswith(prefix):
                return text
        await asyncio.sleep(0.04)
    raise AssertionError(f"no bot message starting with {prefix!r}: {telegram.chat_messages(user.id)}")


async def test_voice_is_transcribed_and_charged_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7001, language_code="en")
    await _fund(app, user, telegram, 10)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    done = await _final_status(telegram, user, "✅ Transcribed")
    assert done.startswith("✅ Transcribed (0:03)")
    text = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "fake speech" in c.params["text"]
    )
    assert text.params["text"] == "Hello from the fake speech service. &lt;b&gt;Tags&lt;/b&gt; stay text."
    # One status message, edited as the job went on, not repeated.
    statuses = [
        c
        for c in telegram.calls_of("sendMessage")
        if c.params.get("chat_id") == user.id and "🎙" in c.params["text"]
    ]
    assert len(statuses) == 1
    edits = [
        c.params["text"] for c in telegram.calls_of("editMessageText") if c.params.get("chat_id") == user.id
    ]
    assert any(e.startswith("🎙 Duration 0:03 · price <b>1</b> credit · balance after: 9") for e in edits)

    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    assert await _balance(app, user.id) == 9
    assert len(speech.transcription_calls) == 1
    async with db.sessions() as session:
        row = await session.scalar(select(Transcript).where(Transcript.user_id == user.id))
        assert row is not None
        assert row.text == "Hello from the fake speech service. <b>Tags</b> stay text."
        assert row.price == 1 and row.duration_ms in range(2900, 3100)
        assert row.audio_key is None  # audio removed after success
        assert not await app.services.storage.exists(f"transcripts/{user.id}/{row.id}/audio.bin")
        hold = await session.get(CreditHold, row.hold_id)
        assert hold is not None and hold.status == HoldStatus.CAPTURED and hold.captured_amount == 1
    assert (
        await count(db, CreditEntry, CreditEntry.user_id == user.id, CreditEntry.kind == EntryKind.CAPTURE)
        == 1
    )
    assert row.text_key is not None
    assert await app.services.storage.get(row.text_key) == row.text.encode()

    # /transcripts lists it with its first words.
    telegram.queue_update(telegram.message_update(user, "/transcripts"))
    listing = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "Your transcripts" in c.params["text"]
    )
    assert (
        "0:03 · Hello from the fake speech service. &lt;b&gt;Tags&lt;/b&gt; stay …" in listing.params["text"]
    )


async def _status_is(db: Database, user_id: int, status: JobStatus) -> bool:
    async with db.sessions() as session:
        row = await session.scalar(select(Transcript).where(Transcript.user_id == user_id))
        return row is not None and row.status == status


async def test_provider_failing_for_good_releases_the_hold(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    speech.fail_always(500)
    user = FakeUser(id=7002, language_code="ru")
    await _fund(app, user, telegram, 5)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    text = await _final_status(telegram, user, "Сервис распознавания")
    assert "Кредиты возвращены" in text
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await _balance(app, user.id) == 5
    async with db.sessions() as session:
        hold = await session.scalar(select(CreditHold).where(CreditHold.user_id == user.id))
    assert hold is not None and hold.status == HoldStatus.RELEASED
    assert len(speech.transcription_calls) >= 2  # retried before giving up


async def test_too_little_balance_refuses_with_the_shortfall_and_holds_nothing(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7003, language_code="en")
    await _fund(app, user, telegram, 0)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    text = await _final_status(telegram, user, "Not enough credits")
    assert text == "Not enough credits: this costs 1, you have 0. You need 1 more credit."
    top_up = telegram.chat_messages(user.id)[-1]["reply_markup"]["inline_keyboard"][0][0]
    assert top_up == {"text": "⭐ Top up", "callback_data": "topup"}
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await count(db, CreditHold, CreditHold.user_id == user.id) == 0
    assert speech.transcription_calls == []


async def test_files_that_cannot_be_transcribed_are_refused_without_charge(
    telegram: FakeTelegramServer, app: Runtime, db: Database, silent_video: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7004, language_code="en")
    await _fund(app, user, telegram, 5)

    telegram.queue_update(telegram.message_update(user, video=(silent_video, 2)))
    assert (await _final_status(telegram, user, "This file has no sound")).endswith("Nothing was charged.")

    telegram.queue_update(
        telegram.message_update(user, document=(b"\x00garbage" * 100, "broken.mp3", "audio/mpeg"))
    )
    assert (await _final_status(telegram, user, "I couldn't read this file")).endswith("Nothing was charged.")

    telegram.queue_update(telegram.message_update(user, document=(b"just text", "notes.txt", "text/plain")))
    unsupported = await telegram.wait_for_call(
        "sendMessage", lambda c: "I can transcribe" in c.params["text"]
    )
    assert unsupported.params["chat_id"] == user.id

    too_big = b"\x00" * (20 * 1024 * 1024 + 1)
    telegram.queue_update(telegram.message_update(user, document=(too_big, "long.mp3", "audio/mpeg")))
    refused = await telegram.wait_for_call("sendMessage", lambda c: "too large" in c.params["text"])
    assert "at most 20 MB" in refused.params["text"]

    await telegram.wait_until_handled()
    assert await _balance(app, user.id) == 5
    assert await count(db, CreditHold, CreditHold.user_id == user.id) == 0
    assert speech.transcription_calls == []
    assert (
        await count(db, Transcript, Transcript.user_id == user.id, Transcript.status == JobStatus.SUCCEEDED)
        == 0
    )


async def test_another_users_transcript_cannot_be_opened(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes
) -> None:
    owner, other = FakeUser(id=7005, language_code="en"), FakeUser(id=7006, language_code="en")
    await _fund(app, owner, telegram, 5)
    await _fund(app, other, telegram, 0)
    telegram.queue_update(telegram.message_update(owner, voice=(voice, 3)))
    await _final_status(telegram, owner, "✅ Transcribed")
    await eventually(lambda: _status_is(db, owner.id, JobStatus.SUCCEEDED))
    async with db.sessions() as session:
        row = await session.scalar(select(Transcript).where(Transcript.user_id == owner.id))
    assert row is not None

    message = telegram.chat_messages(other.id)[-1]
    for action in ("view", "file", "delete"):
        telegram.queue_update(telegram.callback_update(other, f"tr:{action}:{row.id.hex}:0", message=message))
        alert = await telegram.wait_for_call("answerCallbackQuery", lambda c: c.params.get("show_alert"))
        assert alert.params["text"] == "This button is not valid any more."
    assert await count(db, Transcript, Transcript.id == row.id) == 1
    assert not any("fake speech" in str(m.get("text", "")) for m in telegram.chat_messages(other.id))


@pytest.fixture(scope="module")
def long_voice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """36 s: tone, pause, tone, pause… so the recording is cut at silences into several parts."""
    path = tmp_path_factory.mktemp("long") / "long.ogg"
    # One input with known silences: 5 s of tone, then 1 s of silence, six times.
    expression = r"if(lt(mod(t\,6)\,5)\,0.5*sin(2*PI*440*t)\,0)"
    return _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"aevalsrc={expression}:s=48000:d=36",
        "-c:a",
        "libopus",
        "-b:a",
        "24k",
        output=path,
    )


async def test_long_recording_shows_progress_by_part_in_one_message(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    speech: FakeOpenAIServer,
    db: Database,
    long_voice: bytes,
) -> None:
    speech.transcripts = ["First part.", "Second part.", "Third part."]
    runtime: Runtime = await start_app(
        make_settings(
            openai_api_key="sk-test-transcription",
            openai_base_url=speech.base_url,
            transcription_chunk_seconds=15,
            transcription_concurrency=1,
        )
    )
    user = FakeUser(id=7007, language_code="en")
    await _fund(runtime, user, telegram, 5)
    telegram.queue_update(telegram.message_update(user, voice=(long_voice, 36)))
    await _final_status(telegram, user, "✅ Transcribed (0:36)")
    edits = [
        c.params["text"] for c in telegram.calls_of("editMessageText") if c.params.get("chat_id") == user.id
    ]
    parts = [e.splitlines()[-1] for e in edits if "part" in e]
    assert parts == [
        "⏳ Transcribing: part 1 of 3",
        "⏳ Transcribing: part 2 of 3",
        "⏳ Transcribing: part 3 of 3",
    ]
    text = await telegram.wait_for_call("sendMessage", lambda c: "First part." in c.params["text"])
    assert text.params["text"] == "First part. Second part. Third part."
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    assert await _balance(runtime, user.id) == 4  # 36 s is one started minute
    assert len(speech.transcription_calls) == 3


async def test_transcribe_in_a_group_answers_the_replied_voice(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes
) -> None:
    user = FakeUser(id=7008, language_code="en")
    await _fund(app, user, telegram, 5)
    group = -100123
    voice_update = telegram.message_update(user, chat_id=group, voice=(voice, 3))
    telegram.queue_update(voice_update)
    await telegram.wait_until_handled(voice_update)
    # A voice in a group is not transcribed on its own: only when asked.
    assert not [c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == group]
    command = telegram.message_update(
        user, "/transcribe", chat_id=group, reply_to_message=voice_update["message"]
    )
    telegram.queue_update(command)
    text = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == group and "fake speech" in c.params["text"]
    )
    assert text.params["reply_to_message_id"] == voice_update["message"]["message_id"]
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    assert await _balance(app, user.id) == 4


async def test_one_recording_more_than_allowed_is_refused_saying_how_many_run(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes
) -> None:
    user = FakeUser(id=7020, language_code="en")
    await _fund(app, user, telegram, 10)
    async with unit_of_work(app.services.sessions) as session:
        for kind in ("voice", "audio"):  # TRANSCRIPTION_MAX_IN_FLIGHT is 2: two still running
            session.add(Transcript(user_id=user.id, status=JobStatus.RUNNING, source_kind=kind, details={}))
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    refusal = await telegram.wait_for_call(
        "sendMessage",
        lambda c: c.params.get("chat_id") == user.id and "being transcribed" in c.params["text"],
    )
    assert refusal.params["text"] == (
        "You already have 2 recordings being transcribed (at most 2 at a time). Please wait for one to finish."
    )
    assert await count(db, Transcript, Transcript.user_id == user.id) == 2  # nothing recorded
