"""Voice → progress → transcript delivered → credits captured once; failures never charge."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from aisha.billing.models import CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.faults import Fault
from aisha.sandbox.openai import FakeOpenAIServer, TranscriptionRequest
from aisha.transcription.audio import find_ffmpeg
from aisha.transcription.flow import MAX_RUNS
from aisha.transcription.models import Transcript
from tests.conftest import Database
from tests.e2e.conftest import buttons, count, eventually, jobs_done, press
from tests.media import ffconcat_list, hls_playlist, large_wav, lying_ogg


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
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    async with db.sessions() as session:
        refused = await session.scalar(select(Transcript).where(Transcript.user_id == user.id))
    assert refused is not None
    # The top-up carries the recording, so that a paid top-up can resume it.
    assert top_up == {"text": "⭐ Top up", "callback_data": f"trtop:{refused.id.hex}"}
    assert await count(db, CreditHold, CreditHold.user_id == user.id) == 0
    assert speech.transcription_calls == []


async def test_a_recording_refused_for_credits_is_transcribed_after_a_top_up_in_one_press(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7063, language_code="en")
    await _fund(app, user, telegram, 0)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    await _final_status(telegram, user, "Not enough credits")
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    refusal = telegram.chat_messages(user.id)[-1]
    top_up = refusal["reply_markup"]["inline_keyboard"][0][0]["callback_data"]

    def to_user(text: str) -> Callable[[Any], bool]:
        return lambda c: c.params.get("chat_id") == user.id and text in c.params.get("text", "")

    telegram.queue_update(telegram.callback_update(user, top_up, message=refusal))
    packages = await telegram.wait_for_call("sendMessage", to_user("Choose a package"))
    press(telegram, user, "buy:s", packages)
    invoice = await telegram.wait_for_call("sendInvoice", lambda c: c.params.get("chat_id") == user.id)
    payload = invoice.params["payload"]
    telegram.queue_update(
        telegram.pre_checkout_update(user, currency="XTR", total_amount=50, invoice_payload=payload)
    )
    await telegram.wait_for_call("answerPreCheckoutQuery")
    telegram.queue_update(
        telegram.successful_payment_update(
            user, currency="XTR", total_amount=50, invoice_payload=payload, telegram_payment_charge_id="tr-1"
        )
    )
    offer = await telegram.wait_for_call("sendMessage", to_user("Pick up where you left off"))
    [(label, data)] = buttons(offer)
    assert label == "▶ Continue: transcribe for 1 credit"

    first = press(telegram, user, data, offer)
    second = press(telegram, user, data, offer)  # a double press: one transcription
    await telegram.wait_until_handled(first, second)
    alerts = [c.params.get("text") for c in telegram.calls_of("answerCallbackQuery")]
    assert alerts[-1] == "This offer was already used or replaced by a newer one."
    await _final_status(telegram, user, "✅ Transcribed")

    async def resumed_once() -> bool:
        async with db.sessions() as session:
            rows = (await session.scalars(select(Transcript).where(Transcript.user_id == user.id))).all()
        return sorted(row.status for row in rows) == sorted([JobStatus.FAILED, JobStatus.SUCCEEDED])

    await eventually(resumed_once)
    assert await _balance(app, user.id) == 49
    assert len(speech.transcription_calls) == 1


async def _pay_through_topup(telegram: FakeTelegramServer, user: FakeUser, charge: str) -> None:
    """/topup typed (not a refusal's button) → the small package → pre-checkout → paid, handled."""

    def to_user(c: Any) -> bool:
        return bool(c.params.get("chat_id") == user.id)

    telegram.queue_update(telegram.message_update(user, "/topup"))
    packages = await telegram.wait_for_call(
        "sendMessage", lambda c: to_user(c) and "Choose a package" in c.params["text"]
    )
    press(telegram, user, "buy:s", packages)
    payload = (await telegram.wait_for_call("sendInvoice", to_user)).params["payload"]
    telegram.queue_update(
        telegram.pre_checkout_update(user, currency="XTR", total_amount=50, invoice_payload=payload)
    )
    await telegram.wait_for_call("answerPreCheckoutQuery")
    paid = telegram.successful_payment_update(
        user, currency="XTR", total_amount=50, invoice_payload=payload, telegram_payment_charge_id=charge
    )
    telegram.queue_update(paid)
    await telegram.wait_until_handled(paid)


async def test_a_recording_refused_for_credits_is_offered_after_a_top_up_started_by_topup(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7064, language_code="en")
    await _fund(app, user, telegram, 0)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    await _final_status(telegram, user, "Not enough credits")
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))

    # Not the refusal's button: /topup, as a user who went to pay first would.
    await _pay_through_topup(telegram, user, "tr-topup-1")
    offer = await telegram.wait_for_call(
        "sendMessage",
        lambda c: c.params.get("chat_id") == user.id and "Pick up where you left off" in c.params["text"],
    )
    [(label, data)] = buttons(offer)
    assert label == "▶ Continue: transcribe for 1 credit" and data.startswith("resume:tr:")
    await telegram.wait_until_handled(press(telegram, user, data, offer))
    await _final_status(telegram, user, "✅ Transcribed")
    await eventually(lambda: _balance_is(app, user.id, 49))
    assert len(speech.transcription_calls) == 1

    # Continued: the next top-up offers it no more.
    await _pay_through_topup(telegram, user, "tr-topup-2")
    offers = [c for c in telegram.calls_of("sendMessage") if "Pick up where you left off" in c.params["text"]]
    assert [c.params["chat_id"] for c in offers] == [user.id]


async def _balance_is(runtime: Runtime, user_id: int, value: int) -> bool:
    return await _balance(runtime, user_id) == value


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


async def test_a_60_mb_recording_is_refused_on_the_public_bot_api_saying_its_20_mb_limit(
    telegram: FakeTelegramServer, app: Runtime, db: Database, speech: FakeOpenAIServer, tmp_path: Path
) -> None:
    recording = large_wav(tmp_path / "meeting.wav").read_bytes()
    assert len(recording) > 60 * 1024 * 1024
    for user, expected in (
        (
            FakeUser(id=7021, language_code="en"),
            "This file is too large: Telegram lets bots download files of at most 20 MB. Send a shorter"
            " or more compressed recording (a voice message is small). Nothing was charged.",
        ),
        (
            FakeUser(id=7022, language_code="ru"),
            "Файл слишком большой: Telegram позволяет ботам скачивать файлы не больше 20 МБ. Отправьте"
            " запись покороче или сожмите её (голосовое сообщение занимает мало). Оплата не списана.",
        ),
    ):
        await _fund(app, user, telegram, 5)
        telegram.queue_update(telegram.message_update(user, document=(recording, "meeting.wav", "audio/wav")))
        refused = await telegram.wait_for_call(
            "sendMessage", lambda c, u=user: c.params.get("chat_id") == u.id
        )
        assert refused.params["text"] == expected
        await telegram.wait_until_handled()
        assert await _balance(app, user.id) == 5
        assert await count(db, Transcript, Transcript.user_id == user.id) == 0
    # Refused before Telegram was asked for the file (which it would refuse: "file is too big").
    assert telegram.calls_of("getFile") == []
    assert speech.transcription_calls == []


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
    for action in ("view", "file", "srt", "delete", "delete_yes", "keep"):
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


# ----------------------------------------------------- what a file really holds, what it is


@pytest.fixture(scope="module")
def lying_voice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Ogg/Opus whose header says 2 s and that holds 130 s (three started minutes)."""
    return lying_ogg(tmp_path_factory.mktemp("liar") / "liar.ogg", real=130.0, claimed=2.0).read_bytes()


async def _verify_ledger(runtime: Runtime) -> None:
    async with runtime.services.sessions() as session:
        assert await runtime.services.ledger.verify_all(session=session) == []


async def _holds(db: Database, user_id: int) -> list[tuple[int, HoldStatus, int]]:
    async with db.sessions() as session:
        holds = await session.scalars(
            select(CreditHold).where(CreditHold.user_id == user_id).order_by(CreditHold.created_at)
        )
        return [(h.amount, h.status, h.captured_amount) for h in holds]


async def test_a_lying_header_is_charged_for_what_the_file_really_holds(
    telegram: FakeTelegramServer, app: Runtime, db: Database, lying_voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7030, language_code="en")
    await _fund(app, user, telegram, 10)
    telegram.queue_update(telegram.message_update(user, voice=(lying_voice, 2)))

    assert (await _final_status(telegram, user, "✅ Transcribed")).startswith("✅ Transcribed (2:10)")
    edits = [
        c.params["text"] for c in telegram.calls_of("editMessageText") if c.params.get("chat_id") == user.id
    ]
    assert any(e.startswith("🎙 Duration 2:10 · price <b>3</b> credits · balance after: 7") for e in edits)
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    assert await _balance(app, user.id) == 7
    # The speech API heard the whole recording once: 130 s, not the 2 s the header claimed.
    assert [round(c.duration or 0) for c in speech.transcription_calls] == [130]
    # The hold on the header's claim went back; the one on the decoded length was captured.
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0), (3, HoldStatus.CAPTURED, 3)]
    async with db.sessions() as session:
        row = await session.scalar(select(Transcript).where(Transcript.user_id == user.id))
    assert row is not None and row.price == 3 and row.duration_ms in range(129_500, 130_500)
    await _verify_ledger(app)


async def test_a_lying_header_without_credits_for_the_real_length_is_refused_before_any_speech_call(
    telegram: FakeTelegramServer, app: Runtime, db: Database, lying_voice: bytes, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7031, language_code="en")
    await _fund(app, user, telegram, 2)
    telegram.queue_update(telegram.message_update(user, voice=(lying_voice, 2)))

    text = await _final_status(telegram, user, "Not enough credits")
    assert text == (
        "Not enough credits for 3 min: this recording really lasts 2:10 and costs 3 credits, you have 2. "
        "Nothing was charged."
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await _balance(app, user.id) == 2
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0)]
    assert speech.transcription_calls == []
    await _verify_ledger(app)


async def test_a_recording_really_longer_than_allowed_is_refused_with_its_real_length(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    speech: FakeOpenAIServer,
    db: Database,
    lying_voice: bytes,
) -> None:
    runtime: Runtime = await start_app(
        make_settings(
            openai_api_key="sk-test-transcription",
            openai_base_url=speech.base_url,
            transcription_max_duration_seconds=100,
        )
    )
    user = FakeUser(id=7032, language_code="ru")
    await _fund(runtime, user, telegram, 10)
    telegram.queue_update(telegram.message_update(user, voice=(lying_voice, 2)))

    text = await _final_status(telegram, user, "На самом деле")
    assert text == (
        "На самом деле запись длится 2:10 — дольше, чем 1:40, которые я могу расшифровать. "
        "Отправьте запись покороче. Оплата не списана."
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await _balance(runtime, user.id) == 10
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0)]
    assert speech.transcription_calls == []
    await _verify_ledger(runtime)


@pytest.mark.parametrize(
    ("name", "mime", "script"),
    [
        ("list.m3u8", "audio/x-mpegurl", hls_playlist),
        ("list.m3u", "audio/mpegurl", hls_playlist),
        ("song.mp3", "audio/mpeg", ffconcat_list),
    ],
)
async def test_playlists_and_file_lists_are_refused_and_nothing_is_charged(
    telegram: FakeTelegramServer,
    app: Runtime,
    db: Database,
    voice: bytes,
    speech: FakeOpenAIServer,
    tmp_path: Path,
    name: str,
    mime: str,
    script: Callable[[Path], bytes],
) -> None:
    target = tmp_path / "target.ogg"  # a real recording on the worker's disk, for the list to name
    target.write_bytes(voice)
    user = FakeUser(id=7033, language_code="en")
    await _fund(app, user, telegram, 5)
    telegram.queue_update(telegram.message_update(user, document=(script(target), name, mime)))

    text = await _final_status(telegram, user, "This is not a recording")
    assert text == (
        "This is not a recording: playlists, links and lists of files are not accepted. "
        "Send the audio or video file itself. Nothing was charged."
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await _balance(app, user.id) == 5
    assert await _holds(db, user.id) == []
    assert speech.transcription_calls == []


# ------------------------------------------------------------------- one run per claim


async def _rows(db: Database, user_id: int) -> list[Transcript]:
    async with db.sessions() as session:
        rows = await session.scalars(
            select(Transcript).where(Transcript.user_id == user_id).order_by(Transcript.created_at)
        )
        return list(rows)


async def test_the_job_run_twice_at_once_calls_the_speech_api_once_and_charges_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes, speech: FakeOpenAIServer
) -> None:
    speech.transcripts = lambda call: "Same words."
    user = FakeUser(id=7040, language_code="en")
    await _fund(app, user, telegram, 10)
    update = telegram.message_update(user, voice=(voice, 3))
    message = update["message"]
    # Recorded as the handler records it, and run twice at once (a queue that delivers twice).
    async with unit_of_work(app.services.sessions) as session:
        row = Transcript(
            user_id=user.id,
            status=JobStatus.PENDING,
            source_kind="voice",
            details={"file_id": message["voice"]["file_id"], "chat_id": user.id, "message_id": 1},
        )
        session.add(row)
        await session.flush()
        transcript_id = str(row.id)
    telegram.queue_update(update)  # makes the file downloadable; its own job runs a second row

    await asyncio.gather(
        *(app.services.transcription_flow.run(transcript_id=transcript_id) for _ in range(2))
    )
    await eventually(
        lambda: _all_succeeded(db, user.id, 2),
    )

    assert len(speech.transcription_calls) == 2  # one per recorded row, not one per run
    assert await _balance(app, user.id) == 8
    assert [h[1:] for h in await _holds(db, user.id)] == [(HoldStatus.CAPTURED, 1)] * 2
    delivered = [c for c in telegram.calls_of("sendMessage") if c.params["text"] == "Same words."]
    assert len(delivered) == 2
    await _verify_ledger(app)


async def _all_succeeded(db: Database, user_id: int, n: int) -> bool:
    rows = await _rows(db, user_id)
    return len(rows) == n and all(r.status == JobStatus.SUCCEEDED for r in rows)


@pytest.mark.parametrize("late", ["failure", "result"])
async def test_a_late_outcome_of_a_lost_run_changes_nothing_another_run_delivered(
    telegram: FakeTelegramServer,
    app: Runtime,
    db: Database,
    voice: bytes,
    speech: FakeOpenAIServer,
    tmp_path: Path,
    late: str,
) -> None:
    first: list[TranscriptionRequest] = []

    def delay(call: TranscriptionRequest) -> float:
        if not first:
            first.append(call)
            return 1.5
        return 0.0

    # The first run's request hangs, then fails for good or hears other words; the run that
    # took over meanwhile succeeds.
    speech.delay = delay
    if late == "failure":
        speech.fail_always(400, when=lambda call: bool(first) and call is first[0])
    else:
        speech.transcripts = lambda call: "Late words." if call is first[0] else "Winner words."
    user = FakeUser(id=7041, language_code="en")
    await _fund(app, user, telegram, 10)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    async def first_in_flight() -> bool:
        return bool(first)

    await eventually(first_in_flight)
    # The first run looks lost (no progress for an hour): the recovery sweep runs the job again.
    async with unit_of_work(app.services.sessions) as session:
        await session.execute(
            update(Transcript)
            .where(Transcript.user_id == user.id)
            .values(updated_at=app.services.clock.now() - timedelta(hours=1))
        )
    [row] = await _rows(db, user.id)
    assert await app.services.transcription_flow.stuck() == [row.id]
    await app.services.transcription_flow.run(transcript_id=str(row.id))
    assert (await _final_status(telegram, user, "✅ Transcribed")).startswith("✅ Transcribed (0:03)")

    async def first_answered() -> bool:
        return first[0].status != 0

    await eventually(first_answered)
    assert first[0].status == (400 if late == "failure" else 200)
    await jobs_done(app)  # the first run's outcome has arrived and been ignored

    [row] = await _rows(db, user.id)
    assert row.status == JobStatus.SUCCEEDED and row.error is None
    winner = (
        "Hello from the fake speech service. <b>Tags</b> stay text." if late == "failure" else "Winner words."
    )
    assert row.text == winner
    assert await app.services.storage.get(row.text_key or "") == winner.encode()
    assert row.claim == 2
    assert await _balance(app, user.id) == 9
    # The lost run's hold was given back when the second took over; the second's was captured.
    assert [h[1:] for h in await _holds(db, user.id)] == [(HoldStatus.RELEASED, 0), (HoldStatus.CAPTURED, 1)]
    bot_texts = [str(m.get("text", "")) for m in telegram.chat_messages(user.id) if m["from"]["is_bot"]]
    assert not [t for t in bot_texts if "failed" in t or "Late words" in t]
    assert sum(winner in t for t in bot_texts) == 1
    assert _stored_files(tmp_path, user.id) == [f"{row.id}/2/transcript.srt", f"{row.id}/2/transcript.txt"]
    await _verify_ledger(app)


# ------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.RESET])
async def test_the_speech_api_failing_for_good_gives_the_hold_back_and_says_so_once(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    speech: FakeOpenAIServer,
    db: Database,
    voice: bytes,
    fault: Fault,
) -> None:
    runtime: Runtime = await start_app(
        make_settings(
            openai_api_key="sk-test-transcription",
            openai_base_url=speech.base_url,
            transcription_max_attempts=3,
            transcription_retry_base_seconds=0.05,
            transcription_request_timeout_seconds=1.0,
        )
    )
    user = FakeUser(id=7050, language_code="en")
    await _fund(runtime, user, telegram, 5)
    for n in (1, 2, 3):  # every attempt fails
        speech.fail_nth("transcriptions", fault, n=n)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    text = await _final_status(telegram, user, "The speech service failed")
    assert text == (
        "The speech service failed on this recording. Your credits were returned; please try again later."
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert [f for _, f in speech.faults.injected] == [fault] * 3
    assert await _balance(runtime, user.id) == 5
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0)]
    told = [
        c
        for c in (*telegram.calls_of("sendMessage"), *telegram.calls_of("editMessageText"))
        if c.params.get("chat_id") == user.id and "speech service failed" in c.params["text"]
    ]
    assert len(told) == 1
    await _verify_ledger(runtime)


def _stored_files(tmp_path: Path, user_id: int) -> list[str]:
    """The user's transcript files in the test's file:// storage, relative to the user's folder."""
    root = tmp_path / "files" / "transcripts" / str(user_id)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_a_transcript_telegram_refuses_to_deliver_is_not_charged_nor_kept(
    telegram: FakeTelegramServer,
    app: Runtime,
    db: Database,
    voice: bytes,
    speech: FakeOpenAIServer,
    tmp_path: Path,
) -> None:
    user = FakeUser(id=7051, language_code="en")
    await _fund(app, user, telegram, 10)
    # sendMessage 1 is the status message, 2 the transcript: refused (403).
    telegram.fail_nth("sendMessage", Fault.FORBIDDEN, n=2)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    text = await _final_status(telegram, user, "I couldn't send you the transcript")
    assert (
        text == "I couldn't send you the transcript, so nothing was charged. Please send the recording again."
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert len(speech.transcription_calls) == 1
    assert await _balance(app, user.id) == 10
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0)]
    [row] = await _rows(db, user.id)
    assert row.error == "undelivered" and row.text is None and row.text_key is None
    assert _stored_files(tmp_path, user.id) == []  # the text kept before sending is gone
    assert not any("fake speech" in str(m.get("text", "")) for m in telegram.chat_messages(user.id))
    await _verify_ledger(app)


async def test_a_subtitle_file_telegram_refuses_after_the_text_arrived_still_charges(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes
) -> None:
    user = FakeUser(id=7052, language_code="en")
    await _fund(app, user, telegram, 10)
    telegram.fail_nth("sendDocument", Fault.FORBIDDEN)  # the .srt, sent after the text
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "fake speech" in c.params["text"]
    )
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    await eventually(lambda: _refused_documents(telegram))
    assert await _balance(app, user.id) == 9
    assert await _holds(db, user.id) == [(1, HoldStatus.CAPTURED, 1)]
    await _verify_ledger(app)


async def _refused_documents(telegram: FakeTelegramServer) -> bool:
    return ("senddocument", Fault.FORBIDDEN) in telegram.faults.injected


async def test_a_row_whose_runs_keep_dying_is_given_up_once_and_charges_nothing(
    telegram: FakeTelegramServer, app: Runtime, db: Database, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7053, language_code="en")
    await _fund(app, user, telegram, 10)
    async with unit_of_work(app.services.sessions) as session:
        hold = await app.services.ledger.hold(
            session=session, user_id=user.id, amount=1, key="lost-run", reference="transcript:lost"
        )
        row = Transcript(
            user_id=user.id,
            status=JobStatus.RUNNING,
            source_kind="voice",
            claim=MAX_RUNS,  # three runs took it and died
            hold_id=hold.hold_id,
            details={"file_id": "gone", "chat_id": user.id, "message_id": 1},
            updated_at=app.services.clock.now() - timedelta(hours=1),
        )
        session.add(row)
    assert await app.services.transcription_flow.stuck() == [row.id]

    await app.services.transcription_flow.run(transcript_id=str(row.id))

    text = await _final_status(telegram, user, "Something went wrong")
    assert text.endswith("Nothing was charged; please try again later.")
    [stored] = await _rows(db, user.id)
    assert stored.status == JobStatus.FAILED and stored.error == "gave_up"
    assert await _balance(app, user.id) == 10
    assert await _holds(db, user.id) == [(1, HoldStatus.RELEASED, 0)]
    assert await app.services.transcription_flow.stuck() == []
    assert speech.transcription_calls == []
    await _verify_ledger(app)


@pytest.fixture(scope="module")
def almost_a_minute(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("59s") / "voice.ogg"
    return _ffmpeg(
        "-f", "lavfi", "-i", "sine=frequency=440:duration=59", "-c:a", "libopus", "-b:a", "16k", output=path
    )  # fmt: skip


@pytest.mark.parametrize(("funds", "held"), [(5, 2), (1, 1)])
async def test_the_margin_on_the_first_hold_never_costs_more_than_the_real_length(
    telegram: FakeTelegramServer,
    app: Runtime,
    db: Database,
    almost_a_minute: bytes,
    funds: int,
    held: int,
) -> None:
    # 59 s plus the margin is a second minute: held when there is enough, never charged; with
    # just enough for the one minute, that is what is held.
    user = FakeUser(id=7060, language_code="en")
    await _fund(app, user, telegram, funds)
    telegram.queue_update(telegram.message_update(user, voice=(almost_a_minute, 59)))

    await _final_status(telegram, user, "✅ Transcribed (0:59)")
    edits = [
        c.params["text"] for c in telegram.calls_of("editMessageText") if c.params.get("chat_id") == user.id
    ]
    header = f"🎙 Duration 0:59 · price <b>1</b> credit · balance after: {funds - 1}"
    assert any(e.startswith(header) for e in edits)
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    assert await _balance(app, user.id) == funds - 1
    assert await _holds(db, user.id) == [(held, HoldStatus.CAPTURED, 1)]
    await _verify_ledger(app)


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.RESET])
async def test_a_download_telegram_fails_ends_at_once_with_nothing_charged(
    telegram: FakeTelegramServer,
    app: Runtime,
    db: Database,
    voice: bytes,
    speech: FakeOpenAIServer,
    fault: Fault,
) -> None:
    user = FakeUser(id=7061, language_code="en")
    await _fund(app, user, telegram, 5)
    telegram.fail_nth("getFile", fault)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))

    text = await _final_status(telegram, user, "I couldn't download")
    assert text == "I couldn't download this file from Telegram. Nothing was charged; please send it again."
    await eventually(lambda: _status_is(db, user.id, JobStatus.FAILED))
    assert await _balance(app, user.id) == 5
    assert await _holds(db, user.id) == []
    assert speech.transcription_calls == []
    assert await app.services.transcription_flow.stuck() == []


async def test_a_run_that_died_after_keeping_the_text_is_finished_by_delivering_it_without_a_speech_call(
    telegram: FakeTelegramServer, app: Runtime, db: Database, speech: FakeOpenAIServer
) -> None:
    user = FakeUser(id=7062, language_code="en")
    await _fund(app, user, telegram, 10)
    # The state a crash leaves right after the text was committed, before it was sent.
    text_key = f"transcripts/{user.id}/died/transcript.txt"
    await app.services.storage.put(text_key, b"Kept before the crash.")
    async with unit_of_work(app.services.sessions) as session:
        hold = await app.services.ledger.hold(
            session=session, user_id=user.id, amount=2, key="died-after-text", reference="transcript:died"
        )
        row = Transcript(
            user_id=user.id,
            status=JobStatus.RUNNING,
            source_kind="voice",
            claim=1,
            hold_id=hold.hold_id,
            price=1,
            duration_ms=42_000,
            text="Kept before the crash.",
            text_key=text_key,
            details={"file_id": "gone", "chat_id": user.id, "message_id": 1},
            updated_at=app.services.clock.now() - timedelta(hours=1),
        )
        session.add(row)

    await app.services.transcription_flow.run(transcript_id=str(row.id))

    assert (await _final_status(telegram, user, "✅ Transcribed")).startswith("✅ Transcribed (0:42)")
    # The app's own recovery sweep may have taken the run over: wait for whichever run delivers.
    await telegram.wait_for_call("sendMessage", lambda c: c.params["text"] == "Kept before the crash.")
    await jobs_done(app)
    sent = [c for c in telegram.calls_of("sendMessage") if c.params["text"] == "Kept before the crash."]
    assert len(sent) == 1
    [stored] = await _rows(db, user.id)
    assert stored.status == JobStatus.SUCCEEDED
    assert await _balance(app, user.id) == 9
    assert await _holds(db, user.id) == [(2, HoldStatus.CAPTURED, 1)]
    assert speech.transcription_calls == []
    await _verify_ledger(app)


async def test_a_transcript_is_downloaded_file_by_file_and_deleted_only_when_confirmed(
    telegram: FakeTelegramServer, app: Runtime, db: Database, voice: bytes
) -> None:
    user = FakeUser(id=7060, language_code="en")
    await _fund(app, user, telegram, 10)
    telegram.queue_update(telegram.message_update(user, voice=(voice, 3)))
    await _final_status(telegram, user, "✅ Transcribed")
    await eventually(lambda: _status_is(db, user.id, JobStatus.SUCCEEDED))
    [row] = await _rows(db, user.id)

    telegram.queue_update(telegram.message_update(user, "/transcripts"))
    listing = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "Your transcripts" in c.params["text"]
    )
    assert buttons(listing) == [
        ("📄 1", f"tr:view:{row.id.hex}:0"),
        ("⬇️ .txt", f"tr:file:{row.id.hex}:0"),
        ("⬇️ .srt", f"tr:srt:{row.id.hex}:0"),
        ("🗑", f"tr:delete:{row.id.hex}:0"),
    ]
    message = next(
        m for m in telegram.chat_messages(user.id) if m["message_id"] == listing.result["message_id"]
    )

    async def press(data: str) -> None:
        update = telegram.callback_update(user, data, message=message)
        telegram.queue_update(update)
        await telegram.wait_until_handled(update)

    # "⬇️ .txt" sends the .txt alone (the .srt has its own button).
    before = len(telegram.calls_of("sendDocument"))
    await press(f"tr:file:{row.id.hex}:0")
    sent = telegram.calls_of("sendDocument")[before:]
    assert [c.result["document"]["file_name"] for c in sent] == ["transcript.txt"]
    await press(f"tr:srt:{row.id.hex}:0")
    assert telegram.calls_of("sendDocument")[-1].result["document"]["file_name"] == "transcript.srt"

    # 🗑 asks first; "Keep" changes nothing and brings the list back.
    await press(f"tr:delete:{row.id.hex}:0")
    asked = telegram.calls_of("editMessageText")[-1]
    assert asked.params["text"].startswith("Delete the transcript of <code>")
    assert asked.params["text"].endswith(
        "(0:03)?\n<i>Hello from the fake speech service. &lt;b&gt;Tags&lt;/b&gt; stay …</i>\n\nThis can't be undone."
    )
    assert buttons(asked) == [
        ("🗑 Yes, delete", f"tr:delete_yes:{row.id.hex}:0"),
        ("Keep", f"tr:keep:{row.id.hex}:0"),
    ]
    await press(f"tr:keep:{row.id.hex}:0")
    assert telegram.calls_of("answerCallbackQuery")[-1].params["text"] == "Kept."
    assert "Your transcripts" in telegram.calls_of("editMessageText")[-1].params["text"]
    assert await count(db, Transcript, Transcript.id == row.id) == 1

    await press(f"tr:delete:{row.id.hex}:0")
    await press(f"tr:delete_yes:{row.id.hex}:0")
    assert telegram.calls_of("answerCallbackQuery")[-1].params["text"] == "Transcript deleted."
    assert telegram.calls_of("editMessageText")[-1].params["text"].startswith("No transcripts yet")
    assert await count(db, Transcript, Transcript.id == row.id) == 0
