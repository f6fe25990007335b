"""`aisha sandbox` through its page API: the whole bot against the fakes, as the chat page uses it.

Each test starts a Sandbox on a temporary data folder (training takes about a second here) and
talks to it over HTTP as the page does: /api/message, /api/upload, /api/press, /api/pay, and reads
/api/chat and /api/panel.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from aisha.sandbox.app import USER_ID, Sandbox, SandboxStartError
from aisha.sandbox.web import CHANGES
from aisha.transcription.audio import find_ffmpeg
from tests.e2e.conftest import check_refusals, eventually
from tests.e2e.test_avatars import enqueue_seeded_training
from tests.media import DISTINCT, face_photo

Json = dict[str, Any]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(data_dir=tmp_path / "sandbox", port=0, training_delay=1.0) as box:
        yield box
    check_refusals(box.telegram)  # what the sandbox's bot sent, Telegram would have taken


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sandbox.url) as session:
        yield session


def tone(path: Path, seconds: int) -> bytes:
    """A tone encoded with Opus, in the container the file name says (.ogg or .webm)."""
    source = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "libopus", "-b:a", "24k"]
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *source, str(path)], check=True
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 3-second Opus voice note (a tone, for the simulated speech service)."""
    return tone(tmp_path_factory.mktemp("voice") / "voice.ogg", 3)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A few seconds of English speech (espeak-ng) as an Opus voice note."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): no speech to transcribe")
    folder = tmp_path_factory.mktemp("speech")
    text = "Hello from the sandbox. This is a voice message for the test."
    subprocess.run([espeak, "-v", "en", "-s", "150", "-w", str(folder / "speech.wav"), text], check=True)
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(folder / "speech.wav"),
         "-ac", "1", "-c:a", "libopus", "-b:a", "24k", str(folder / "voice.ogg")],
        check=True,
    )  # fmt: skip
    return (folder / "voice.ogg").read_bytes()


# --- acting as the page ---------------------------------------------------------------------------


async def call(client: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as response:
        return response.status, await response.json()


async def chat(client: aiohttp.ClientSession) -> Json:
    status, body = await call(client, "GET", "/api/chat")
    assert status == 200
    return body  # type: ignore[no-any-return]


async def say(client: aiohttp.ClientSession, text: str) -> int:
    status, body = await call(client, "POST", "/api/message", json={"text": text})
    assert status == 200 and body["ok"], body
    return int(body["message_id"])


async def press(client: aiohttp.ClientSession, message: Json, prefix: str) -> Json:
    """Press the first inline button under `message` whose callback data starts with `prefix`."""
    data = next(data for data in callback_data(message) if data.startswith(prefix))
    status, body = await call(
        client, "POST", "/api/press", json={"message_id": message["message_id"], "data": data}
    )
    assert status == 200 and body["ok"], body
    return body  # type: ignore[no-any-return]


async def upload(client: aiohttp.ClientSession, kind: str, *files: tuple[str, bytes]) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("kind", kind)
    for name, data in files:
        form.add_field("file", data, filename=name)
    return await call(client, "POST", "/api/upload", data=form)


def callback_data(message: Json) -> list[str]:
    rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
    return [button["callback_data"] for row in rows for button in row if "callback_data" in button]


async def bot_message(
    client: aiohttp.ClientSession, where: Callable[[Json], bool], *, timeout: float = 15.0
) -> Json:
    """The newest message from the bot matching `where`, waiting for it to arrive."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        messages = (await chat(client))["messages"]
        found = [m for m in messages if not m["outgoing"] and where(m)]
        if found:
            return found[-1]
        if asyncio.get_running_loop().time() > deadline:
            texts = [m.get("text") or m.get("caption") for m in messages]
            raise AssertionError(f"no such bot message within {timeout}s; the chat: {texts}")
        await asyncio.sleep(0.1)


async def _now(value: bool) -> bool:
    return value


def text_has(part: str) -> Callable[[Json], bool]:
    return lambda message: part in (message.get("text") or message.get("caption") or "")


async def panel(client: aiohttp.ClientSession) -> Json:
    status, body = await call(client, "GET", "/api/panel")
    assert status == 200
    return body  # type: ignore[no-any-return]


PACKAGES = {"m": (100, 110), "l": (250, 300)}  # the default packages: stars, credits


async def top_up(client: aiohttp.ClientSession, package: str = "m") -> None:
    """/topup → a package → pay the invoice with Stars."""
    stars, credits = PACKAGES[package]
    await say(client, "/topup")
    packages = await bot_message(client, lambda m: f"buy:{package}" in callback_data(m))
    await press(client, packages, f"buy:{package}")
    invoice = await bot_message(client, lambda m: "invoice" in m)
    assert invoice["invoice"]["currency"] == "XTR" and invoice["invoice"]["total_amount"] == stars
    status, body = await call(client, "POST", "/api/pay", json={"message_id": invoice["message_id"]})
    assert (status, body) == (200, {"ok": True})
    await bot_message(client, text_has(f"{credits} credits added"))


# --- the tests ----------------------------------------------------------------------------------------


async def test_start_shows_the_greeting_and_the_keyboard(client: aiohttp.ClientSession) -> None:
    message_id = await say(client, "/start")

    view = await chat(client)
    assert view["user"] == {"id": USER_ID, "first_name": "Sandbox user", "language_code": "en"}
    assert view["bot"]["username"] == "aisha_sandbox_bot"
    mine, greeting = view["messages"]
    assert (mine["message_id"], mine["text"], mine["outgoing"]) == (message_id, "/start", True)
    assert greeting["outgoing"] is False and greeting["edited"] is False
    assert greeting["text"].startswith("Hi, Sandbox user! I'm Aisha.")
    labels = [button["text"] for row in view["reply_keyboard"]["keyboard"] for button in row]
    assert "💰 Balance" in labels


async def test_a_pressed_button_gets_the_bots_answer_and_edits_show(client: aiohttp.ClientSession) -> None:
    await say(client, "/settings")
    settings = await bot_message(client, lambda m: "lang:en" in callback_data(m))
    pressed = await press(client, settings, "lang:en")
    assert pressed["answer"] == {"text": "Language set to English.", "show_alert": False}

    await say(client, "/delete_me")
    question = await bot_message(client, lambda m: len(callback_data(m)) == 2)
    await press(client, question, "privacy:cancel")
    edited = next(m for m in (await chat(client))["messages"] if m["message_id"] == question["message_id"])
    assert edited["edited"] is True
    assert "reply_markup" not in edited


async def test_a_top_up_with_stars_raises_the_balance_with_a_ledger_entry(
    client: aiohttp.ClientSession,
) -> None:
    await top_up(client)

    view = await panel(client)
    assert (view["balance"], view["on_hold"]) == (210, 0)
    entry, welcome = view["ledger"]  # newest first
    assert (entry["kind"], entry["amount"], entry["balance_after"]) == ("topup", 110, 210)
    assert (welcome["kind"], welcome["amount"], welcome["description"]) == ("bonus", 100, "Welcome bonus")
    assert entry["description"] == "Top-up: 100 ⭐"
    # The statement the user reads, folded (here every entry is an operation of its own).
    assert [(o["amount"], o["state"], o["description"]) for o in view["operations"]] == [
        (110, "done", "Top-up: 100 ⭐"),
        (100, "done", "Welcome bonus"),
    ]
    methods = [c["method"] for c in view["calls"] if c["service"] == "telegram"]
    credited = next(c["summary"] for c in view["calls"] if "credits added" in c["summary"])
    assert "<" not in credited  # shown as the chat shows it, without the HTML markup
    assert methods.index("answerPreCheckoutQuery") < methods.index("sendInvoice")  # newest first

    # A call opens to show what the bot sent and what Telegram answered.
    invoice = next(c for c in view["calls"] if c["method"] == "sendInvoice")
    status, detail = await call(client, "GET", f"/api/calls/telegram/{invoice['number']}")
    assert status == 200
    assert (detail["status"], detail["request"]["currency"]) == (200, "XTR")
    assert detail["response"]["invoice"]["total_amount"] == 100
    [set_webhook] = [c for c in view["calls"] if c["method"] == "setWebhook"]
    status, webhook = await call(client, "GET", f"/api/calls/telegram/{set_webhook['number']}")
    assert status == 200
    assert webhook["request"]["secret_token"] == "•••"  # the webhook's secret is not shown
    for gone in ("/api/calls/telegram/99999", "/api/calls/fal/1", "/api/calls/mail/1", "/api/calls/fal/x"):
        status, body = await call(client, "GET", gone)
        assert (status, body) == (404, {"error": "That call is not kept any more (only the newest are)."})


async def test_three_photos_arrive_as_one_album(client: aiohttp.ClientSession) -> None:
    status, body = await upload(client, "photo", *((f"{i}.jpg", face_photo(i)) for i in range(3)))
    assert status == 200 and len(body["message_ids"]) == 3

    messages = {m["message_id"]: m for m in (await chat(client))["messages"]}
    album = [messages[message_id] for message_id in body["message_ids"]]
    assert all(m["outgoing"] and m["photo"] for m in album)
    assert len({m["media_group_id"] for m in album}) == 1
    async with client.get(f"/api/files/{album[0]['photo'][-1]['file_id']}") as response:
        assert response.content_type == "image/jpeg"
        assert await response.read() == face_photo(0)


async def test_a_generation_returns_images_marked_as_sandbox_output(
    client: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    await top_up(client)
    await say(client, "a red fox reading a newspaper")
    no_avatar = await bot_message(client, lambda m: any(":na:" in data for data in callback_data(m)))
    await press(client, no_avatar, next(data for data in callback_data(no_avatar) if ":na:" in data))
    options = await bot_message(client, lambda m: any(":go:" in data for data in callback_data(m)))
    assert options["edited"] is True  # the same message, now with the options
    await press(client, options, next(data for data in callback_data(options) if ":go:" in data))

    photo = await bot_message(client, lambda m: "photo" in m, timeout=30)
    async with client.get(f"/api/files/{photo['photo'][-1]['file_id']}") as response:
        data = await response.read()
    assert data.startswith((b"\x89PNG", b"\xff\xd8"))
    with Image.open(io.BytesIO(data)) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 100  # a drawn picture, not a plain fill
    [job] = sandbox.fal.submissions
    assert "red fox" in job.payload["prompt"]
    view = await panel(client)
    kinds = {(j["kind"], j["status"]) for j in view["jobs"]}
    assert ("generation", "succeeded") in kinds

    # The submission opens to show the prompt sent and the request id FAL gave back.
    submit = next(c for c in view["calls"] if c["service"] == "fal" and c["method"] == "POST")
    status, detail = await call(client, "GET", f"/api/calls/fal/{submit['number']}")
    assert status == 200 and "fal_webhook=" in detail["path"]
    assert "red fox" in detail["request"]["prompt"]
    assert (detail["status"], detail["response"]["request_id"]) == (200, job.request_id)
    enhance = next(c for c in view["calls"] if c["service"] == "openai")
    status, detail = await call(client, "GET", f"/api/calls/openai/{enhance['number']}")
    assert status == 200 and detail["method"] == "chat/completions"
    assert detail["request"]["messages"] and detail["response"]["choices"]


async def test_an_avatar_from_ten_photos_trains_and_then_generates(
    client: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    await top_up(client, "l")
    await top_up(client, "m")
    await say(client, "/avatar")
    intro = await bot_message(client, lambda m: "avt:portrait" in callback_data(m))
    await press(client, intro, "avt:portrait")
    await bot_message(client, text_has("What shall we call this avatar?"))
    await say(client, "Me")
    status, _ = await upload(client, "photo", *((f"{i}.jpg", face_photo(i)) for i in DISTINCT))
    assert status == 200
    accepted = await bot_message(client, text_has("Accepted: 10 photos"), timeout=60)
    await press(client, accepted, "avw:review")
    review = await bot_message(client, lambda m: "avw:go" in callback_data(m))
    await press(client, review, "avw:go")
    await bot_message(client, text_has("is ready"), timeout=30)

    await say(client, "me as an astronaut")
    options = await bot_message(client, lambda m: any(":go:" in data for data in callback_data(m)))
    await press(client, options, next(data for data in callback_data(options) if ":go:" in data))
    # The result carries its prompt (the review's album of the photos did not).
    await bot_message(client, lambda m: "photo" in m and "astronaut" in m.get("caption", ""), timeout=30)

    await say(client, "/balance")
    balance = await bot_message(client, text_has("Balance:"))
    assert balance["text"].startswith("💰 Balance: 205 credits")  # 100 + 300 + 110 - 300 - 5
    # One line per operation: the training and the image each with what they cost.
    assert all(
        line in balance["text"]
        for line in ("−300  Avatar training", "−5  Image generation, 1 image", "+110  Top-up")
    )
    jobs = {(j["kind"], j["status"]) for j in (await panel(client))["jobs"]}
    assert jobs == {("training", "ready"), ("generation", "succeeded")}
    # The operator sees what each job cost, with which avatar, how long it took and its FAL id.
    by_kind = {job["kind"]: job for job in (await panel(client))["jobs"]}
    training, generation = by_kind["training"], by_kind["generation"]
    assert (training["charged"], generation["charged"]) == (300, 5)
    assert (training["avatar"], generation["avatar"]) == ("Me", "Me")
    assert training["provider_request_id"] in sandbox.fal.jobs
    assert generation["provider_request_id"] in sandbox.fal.jobs
    assert generation["duration_seconds"] >= 0 and generation["error"] is None


async def test_a_voice_message_is_transcribed_for_real(client: aiohttp.ClientSession, speech: bytes) -> None:
    # The sandbox hears speech with the local Whisper (the bundled tiny.en): its real words.
    await top_up(client)
    status, _ = await upload(client, "voice", ("voice.ogg", speech))
    assert status == 200

    transcript = await bot_message(client, text_has("sandbox"), timeout=60)
    words = transcript["text"].lower()
    assert words.index("hello") < words.index("sandbox") < words.index("message") < words.index("test")
    jobs = (await panel(client))["jobs"]
    assert [(j["kind"], j["status"]) for j in jobs] == [("transcription", "succeeded")]
    assert not any("audio/transcriptions" in str(call) for call in (await panel(client))["calls"])


async def test_russian_on_the_english_only_model_is_refused_plainly(
    client: aiohttp.ClientSession, speech: bytes
) -> None:
    await say(client, "/settings")
    await press(client, await bot_message(client, lambda m: "tlang:ru" in callback_data(m)), "tlang:ru")
    await top_up(client)
    balance = (await panel(client))["balance"]

    status, _ = await upload(client, "voice", ("voice.ogg", speech))
    assert status == 200

    await bot_message(client, text_has("understands English only"), timeout=60)
    jobs = (await panel(client))["jobs"]
    assert [(j["kind"], j["status"]) for j in jobs] == [("transcription", "failed")]
    assert jobs[0]["charged"] == 0 and jobs[0]["error"]
    assert (await panel(client))["balance"] == balance  # the hold went back


async def test_without_local_speech_a_voice_message_gets_the_simulated_transcript(
    tmp_path: Path, voice: bytes
) -> None:
    async with (
        Sandbox(data_dir=tmp_path / "sandbox", port=0, local_speech=False) as box,
        aiohttp.ClientSession(base_url=box.url) as client,
    ):
        await top_up(client)
        status, body = await upload(client, "voice", ("voice.ogg", voice))
        assert status == 200

        sent = next(m for m in (await chat(client))["messages"] if m["message_id"] == body["message_ids"][0])
        assert sent["voice"]["duration"] == 3
        await bot_message(client, text_has("[sandbox] Simulated transcript of 0:03 of audio."), timeout=30)
        jobs = (await panel(client))["jobs"]
        assert [(j["kind"], j["status"]) for j in jobs] == [("transcription", "succeeded")]


async def test_a_voice_recorded_in_the_browser_is_sent_as_ogg(
    client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    status, body = await upload(client, "voice", ("recording.webm", tone(tmp_path / "recording.webm", 2)))
    assert status == 200

    sent = next(m for m in (await chat(client))["messages"] if m["message_id"] == body["message_ids"][0])
    assert sent["voice"]["duration"] == 2
    async with client.get(f"/api/files/{sent['voice']['file_id']}") as response:
        assert response.content_type == "audio/ogg"
        assert (await response.read()).startswith(b"OggS")


async def test_a_long_poll_answers_when_a_message_arrives(
    sandbox: Sandbox, client: aiohttp.ClientSession
) -> None:
    assert sandbox.page is not None
    changes = sandbox.page[CHANGES]
    version = (await chat(client))["version"]
    poll = asyncio.create_task(call(client, "GET", f"/api/chat?since={version}"))
    await eventually(lambda: _now(changes.waiting == 1))  # the server holds it...
    assert not poll.done()  # ...and has not answered it

    await say(client, "/help")
    async with asyncio.timeout(5):
        status, body = await poll
    assert status == 200 and body["version"] > version
    assert any(m.get("text") == "/help" for m in body["messages"])


async def test_bad_input_is_refused_and_changes_nothing(client: aiohttp.ClientSession) -> None:
    before = await chat(client)
    refusals = [
        await upload(client, "sticker", ("a.webp", b"RIFF")),
        await upload(client, "photo", ("empty.jpg", b"")),
        await upload(client, "photo", ("broken.jpg", b"\xff\xd8 not really a jpeg")),
        await upload(client, "voice", ("noise.ogg", b"OggS but nothing playable")),
        await upload(client, "document", ("big.bin", b"x" * (50 * 1024 * 1024 + 1))),
        await call(client, "POST", "/api/press", json={"data": "lang:en"}),
        await call(client, "POST", "/api/press", json={"message_id": 999, "data": "lang:en"}),
        await call(client, "POST", "/api/pay", json={"message_id": "one"}),
        await call(client, "POST", "/api/message", data=b"{not json"),
        await call(client, "POST", "/api/message", json={"text": "  "}),
        await call(client, "GET", "/api/files/no-such-file"),
        await call(client, "GET", "/api/chat?since=soon"),
    ]

    statuses = [status for status, _ in refusals]
    assert statuses == [400, 400, 400, 400, 413, 400, 404, 400, 400, 400, 404, 400]
    assert all(isinstance(body["error"], str) and body["error"] for _, body in refusals)
    assert refusals[0][1]["error"].startswith("Unknown kind “sticker”")
    assert refusals[4][1]["error"] == "The file “big.bin” is larger than 50 MB."
    after = await chat(client)
    assert (after["version"], after["messages"]) == (before["version"], before["messages"])


def _grey_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A real 8-bit greyscale PNG of one colour, compressed row by row (12000×12000 is 140 KB);
    with `rows`, only that many rows of pixel data follow the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + width)  # the filter byte, then one byte per pixel
    pixels = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels + packer.flush())
        + chunk(b"IEND", b"")
    )


async def test_a_photo_over_the_pixel_limit_is_refused_from_its_header(client: aiohttp.ClientSession) -> None:
    before = await chat(client)
    huge = _grey_png(12000, 12000)  # 144 megapixels: 432 MB once decoded to RGB
    assert struct.unpack(">II", huge[16:24]) == (12000, 12000)  # IHDR's width and height
    bomb = _grey_png(30000, 30000, rows=1)  # 900 megapixels claimed: Pillow itself calls it a bomb
    refusals = [
        await upload(client, "photo", ("huge.png", huge)),
        await upload(client, "photo", ("bomb.png", bomb)),
    ]
    assert refusals == [
        (413, {"error": "The picture “huge.png” is too large: over 50 megapixels."}),
        (413, {"error": "The picture “bomb.png” is too large: over 50 megapixels."}),
    ]
    after = await chat(client)
    assert (after["version"], after["messages"]) == (before["version"], before["messages"])
    # A photo under the limit still goes through.
    status, _ = await upload(client, "photo", ("fine.png", _grey_png(2000, 1500)))
    assert status == 200


async def test_other_sites_cannot_use_the_api(client: aiohttp.ClientSession, sandbox: Sandbox) -> None:
    before = await chat(client)
    forged = [
        await call(
            client,
            "POST",
            "/api/message",
            json={"text": "/delete_me"},
            headers={"Origin": "https://evil.example"},
        ),
        await call(
            client, "POST", "/api/message", json={"text": "/delete_me"}, headers={"Host": "evil.example:8090"}
        ),
    ]
    assert [status for status, _ in forged] == [403, 403]
    assert forged[0][1]["error"] == "Only the sandbox's own page may call its API."
    after = await chat(client)
    assert (after["version"], after["messages"]) == (before["version"], before["messages"])
    own_origin = sandbox.url.rstrip("/")
    status, _ = await call(
        client, "POST", "/api/message", json={"text": "/help"}, headers={"Origin": own_origin}
    )
    assert status == 200


async def test_a_restart_keeps_the_chat_and_balance_and_finishes_the_training(tmp_path: Path) -> None:
    data_dir = tmp_path / "sandbox"
    async with Sandbox(data_dir=data_dir, port=0, training_delay=3.0) as first:
        async with aiohttp.ClientSession(base_url=first.url) as client:
            await say(client, "/start")
            await top_up(client, "l")  # a portrait avatar's price
            before = (await chat(client))["messages"]
        fal_url = first.fal.base_url
        await enqueue_seeded_training(first.runtime, USER_ID, name="Restarted")
        async with asyncio.timeout(10):
            [job] = await first.fal.wait_submissions(1)
    assert job.state != "COMPLETED"  # stopped in flight

    restarted = Sandbox(data_dir=data_dir, port=0, training_delay=3.0)
    async with restarted as second, aiohttp.ClientSession(base_url=second.url) as client:
        assert (await chat(client))["messages"][: len(before)] == before
        await bot_message(client, text_has("is ready"), timeout=20)
        view = await panel(client)
    assert [(j["kind"], j["status"]) for j in view["jobs"]] == [("training", "ready")]
    assert second.fal.jobs[job.request_id].state == "COMPLETED"
    assert second.fal.base_url == fal_url  # so the URLs the bot stored still work
    assert (view["balance"], view["on_hold"]) == (100, 0)  # the welcome bonus is left
    assert [(e["kind"], e["amount"]) for e in view["ledger"]] == [
        ("capture", 0),
        ("hold", -300),
        ("topup", 300),
        ("bonus", 100),
    ]
    # The hold and its capture are one operation: the training, which cost 300.
    assert [(o["kind"], o["amount"], o["entries"]) for o in view["operations"]] == [
        ("job", -300, 2),
        ("topup", 300, 1),
        ("bonus", 100, 1),
    ]
    assert view["operations"][0]["description"] == "Avatar training"


async def test_a_remembered_port_in_use_is_named_clearly(tmp_path: Path) -> None:
    async with Sandbox(data_dir=tmp_path, port=0) as first:
        fal_port = int(first.fal.base_url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", fal_port))
        squatter.listen()
        with pytest.raises(SandboxStartError, match=f"port {fal_port}, remembered in .*ports.json"):
            await Sandbox(data_dir=tmp_path, port=0).start()
