"""The HTTP edges under abuse: oversized FAL webhooks are cut off at the cap, and odd but valid
Telegram updates get a logged 200 instead of a 5xx that Telegram would retry forever."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog

from aisha.api.fal import MAX_BODY_BYTES, WEBHOOK_PATH
from aisha.db.models import ProcessedUpdate
from aisha.logs import configure_logging
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalServer
from aisha.users.models import User
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, buttons, count, eventually, sent_to

CHUNK = 64 * 1024


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server


@pytest.fixture
async def fal_app(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], fal: FakeFalServer
) -> Runtime:
    settings = make_settings(fal_key=fal.key, fal_queue_url=fal.base_url, fal_jwks_url=fal.jwks_url)
    runtime: Runtime = await start_app(settings, serve_only=True)
    return runtime


async def _post_raw(
    port: int, head: str, chunks: int, *, chunked: bool, finish: bool = False
) -> tuple[int, int]:
    """POST from a raw socket, sending up to `chunks` chunks of 64 KB but stopping as soon as the
    server answers (`finish`: then the last chunk); returns (HTTP status, bytes of body sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    sent = 0
    response = asyncio.ensure_future(reader.readline())
    try:
        for _ in range(chunks):
            if response.done():
                break
            payload = b"x" * CHUNK
            writer.write(b"%x\r\n%s\r\n" % (CHUNK, payload) if chunked else payload)
            sent += CHUNK
            try:
                await writer.drain()
            except ConnectionError:
                break  # the server hung up on us: its answer is already in the socket
            await asyncio.sleep(0)
        if finish:
            writer.write(b"0\r\n\r\n")
        status_line = await asyncio.wait_for(response, 10)
    finally:
        writer.close()
    return int(status_line.split()[1]), sent


def _head(path: str, extra: str) -> str:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"


async def test_a_chunked_fal_webhook_far_over_the_cap_is_cut_off_at_the_cap(fal_app: Runtime) -> None:
    # 400 MB announced by nothing: the server must answer 413 long before the client is done.
    chunks = 400 * 1024 * 1024 // CHUNK
    status, sent = await _post_raw(
        fal_app.http_port, _head(WEBHOOK_PATH, "Transfer-Encoding: chunked\r\n"), chunks, chunked=True
    )
    assert status == 413
    # What was sent before the answer: the cap plus what the socket buffers held, never the 400 MB.
    assert sent < MAX_BODY_BYTES + 16 * 1024 * 1024


async def test_a_fal_webhook_announcing_more_than_the_cap_is_refused_before_its_body(
    fal_app: Runtime,
) -> None:
    declared = f"Content-Length: {400 * 1024 * 1024}\r\n"
    status, sent = await _post_raw(fal_app.http_port, _head(WEBHOOK_PATH, declared), 0, chunked=False)
    assert (status, sent) == (413, 0)


async def test_a_fal_webhook_whose_content_length_lies_is_cut_off_at_the_cap(fal_app: Runtime) -> None:
    # Announces 1 KB, sends on: what follows the declared length is not this request's body. The
    # server reads 1 KB and refuses it for want of a signature (401), or takes the rest for a
    # malformed next request (the server's 400); either way it never buffers the rest.
    status, _ = await _post_raw(
        fal_app.http_port, _head(WEBHOOK_PATH, "Content-Length: 1024\r\n"), 1000, chunked=False
    )
    assert status in (400, 401)


async def test_a_fal_webhook_under_the_cap_still_needs_its_signature(fal_app: Runtime) -> None:
    status, sent = await _post_raw(
        fal_app.http_port,
        _head(WEBHOOK_PATH, "Transfer-Encoding: chunked\r\n"),
        2,
        chunked=True,
        finish=True,
    )
    assert (status, sent) == (401, 2 * CHUNK)


# --- Telegram: odd but valid updates --------------------------------------------------------------

Post = Callable[[Any], Awaitable[int]]


@pytest.fixture
def logs(telegram: FakeTelegramServer) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The app's JSON log lines, as the operator reads them (secrets masked)."""
    configure_logging(secrets=[telegram.token, WEBHOOK_SECRET])
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)

    def read() -> list[dict[str, Any]]:
        text = stream.getvalue()
        assert telegram.token not in text and WEBHOOK_SECRET not in text
        return [json.loads(line) for line in text.splitlines()]

    yield read
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def _events(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == event]


@pytest.fixture
async def post(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> Post:
    """POSTs an update (a dict, or raw JSON bytes) to the app's webhook as Telegram does."""
    settings = make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    runtime: Runtime = await start_app(settings)
    url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"

    async def send(update: Any) -> int:
        if isinstance(update, dict):
            return await telegram.post_webhook(url, update, secret=WEBHOOK_SECRET)
        async with httpx.AsyncClient() as client:
            response = await client.post(
                url,
                content=update,
                headers={
                    "X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET,
                    "Content-Type": "application/json",
                },
            )
        return response.status_code

    return send


def _deep_update(update_id: int, depth: int) -> bytes:
    """A message replying to a message replying to ... `depth` deep, as raw JSON (too deep for
    json.dumps to write)."""
    chat = '"chat": {"id": 9001, "type": "private"}, "from": {"id": 9001, "is_bot": false, "first_name": "D"}'
    link = '{"message_id": %d, "date": 1700000000, ' + chat + ', "text": "hi", "reply_to_message": '
    last = '{"message_id": 0, "date": 1700000000, ' + chat + ', "text": "hi"}'
    body = "".join(link % (i + 1) for i in range(depth)) + last + "}" * depth
    return f'{{"update_id": {update_id}, "message": {body}}}'.encode()


async def test_a_failing_handler_gets_a_logged_200_and_the_next_update_is_handled(
    telegram: FakeTelegramServer, post: Post, logs: Callable[[], list[dict[str, Any]]], db: Database
) -> None:
    user = FakeUser(id=5101, first_name="Ann", language_code="en")
    telegram.fail_next("sendMessage", 400, description="Bad Request: chat not found")
    update = telegram.message_update(user, "/start")
    assert await post(update) == 200
    failed = _events(logs(), "webhook.telegram.update_failed")
    assert [(line["update_id"], line["error"]) for line in failed] == [
        (update["update_id"], "TelegramBadRequest")
    ]
    assert failed[0]["level"] == "error"
    # What the update did before its reply committed (the reply can't undo it); the user's next
    # message is answered as usual.
    assert await count(db, ProcessedUpdate, ProcessedUpdate.update_id == update["update_id"]) == 1
    assert await post(telegram.message_update(user, "/start")) == 200
    assert (await sent_to(telegram, user.id)).params["text"].startswith("Hi, Ann!")


async def test_updates_without_a_sender_get_a_200(
    telegram: FakeTelegramServer, post: Post, logs: Callable[[], list[dict[str, Any]]], db: Database
) -> None:
    channel = {"id": -1001234567890, "type": "channel", "title": "News"}
    group = {"id": -1009876543210, "type": "supergroup", "title": "Chat"}
    channel_post = {
        "update_id": telegram.next_update_id(),
        "channel_post": {
            "message_id": 7,
            "date": 1700000000,
            "chat": channel,
            "sender_chat": channel,
            "text": "/start",
        },
    }
    anonymous_admin = {
        "update_id": telegram.next_update_id(),
        "message": {
            "message_id": 8,
            "date": 1700000000,
            "chat": group,
            "sender_chat": group,
            "text": "a cat in a hat",
        },
    }
    assert await post(channel_post) == 200
    assert await post(anonymous_admin) == 200
    assert _events(logs(), "webhook.telegram.update_failed") == []
    assert await count(db, User) == 0


async def test_the_largest_64_bit_update_id_is_handled_and_a_larger_one_skipped_with_a_log_line(
    telegram: FakeTelegramServer, post: Post, logs: Callable[[], list[dict[str, Any]]], db: Database
) -> None:
    user = FakeUser(id=5102, first_name="Bo", language_code="en")
    largest = 2**63 - 1
    assert await post(telegram.message_update(user, "/start", update_id=largest)) == 200
    assert (await sent_to(telegram, user.id)).params["text"].startswith("Hi, Bo!")
    assert await count(db, ProcessedUpdate, ProcessedUpdate.update_id == largest) == 1

    for too_large in (2**63, 2**64 + 5):
        assert await post(telegram.message_update(user, "/start", update_id=too_large)) == 200
    skipped = _events(logs(), "webhook.telegram.update_skipped")
    assert [(line["update_id"], line["reason"]) for line in skipped] == [
        (2**63, "update_id_out_of_range"),
        (2**64 + 5, "update_id_out_of_range"),
    ]
    assert await count(db, ProcessedUpdate) == 1
    assert len(telegram.calls_of("sendMessage")) == 1


async def test_a_reply_chain_1000_deep_is_skipped_with_a_log_line(
    telegram: FakeTelegramServer, post: Post, logs: Callable[[], list[dict[str, Any]]], db: Database
) -> None:
    assert await post(_deep_update(777001, 1000)) == 200
    assert await post(_deep_update(777002, 5000)) == 200
    assert await post(_deep_update(777003, 100_000)) == 200  # 13 MB: over the cap, not even read
    skipped = _events(logs(), "webhook.telegram.update_skipped")
    assert [(line.get("update_id"), line["reason"]) for line in skipped] == [
        (777001, "json_invalid"),
        (777002, "json_invalid"),
        (None, "too_large"),
    ]
    assert await post(b'{"update_id": 777004, "message": [1, 2') == 200  # cut short
    assert _events(logs(), "webhook.telegram.update_skipped")[-1]["update_id"] == 777004
    assert await count(db, ProcessedUpdate) == 0
    assert telegram.calls_of("sendMessage") == []


async def test_a_button_answered_after_its_query_expired_still_does_its_work(
    telegram: FakeTelegramServer, post: Post, logs: Callable[[], list[dict[str, Any]]], db: Database
) -> None:
    user = FakeUser(id=5103, first_name="Cy", language_code="ru")
    assert await post(telegram.message_update(user, "/settings")) == 200
    settings = await sent_to(telegram, user.id)
    assert ("🇬🇧 English", "lang:en") in buttons(settings)
    message = next(
        m for m in telegram.chat_messages(user.id) if m["message_id"] == settings.result["message_id"]
    )
    telegram.fail_next(
        "answerCallbackQuery",
        400,
        description="Bad Request: query is too old and response timeout expired or query ID is invalid",
    )
    assert await post(telegram.callback_update(user, "lang:en", message=message)) == 200

    async def english() -> bool:
        async with db.sessions() as session:
            return (await session.get(User, user.id)).language == "en"  # type: ignore[union-attr]

    await eventually(english)
    texts = [c.params["text"] for c in telegram.calls_of("sendMessage") if c.params["chat_id"] == user.id]
    assert texts[-1] == "Language set to English."
    assert _events(logs(), "webhook.telegram.update_failed") == []
    assert len(_events(logs(), "telegram.callback_answer_too_late")) == 1


async def test_polling_passes_over_an_update_it_cannot_read_and_one_whose_handler_fails(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    await start_app(make_settings())  # polling
    before, after, unlucky = (
        FakeUser(id=i, first_name=n, language_code="en")
        for i, n in ((5201, "Al"), (5202, "Di"), (5203, "Ed"))
    )
    telegram.queue_update(telegram.message_update(before, "/start"))
    deep = json.loads(_deep_update(telegram.next_update_id(), 300))  # readable JSON, too deep to be an Update
    telegram.queue_update(deep)
    telegram.queue_update(telegram.message_update(after, "/start"))
    for user in (before, after):
        assert (await sent_to(telegram, user.id)).params["text"].startswith(f"Hi, {user.first_name}!")
    skipped = _events(logs(), "polling.update_skipped")
    assert [line["update_id"] for line in skipped] == [deep["update_id"]]

    telegram.fail_next("sendMessage", 400, description="Bad Request: chat not found")
    failing = telegram.message_update(unlucky, "/start")
    telegram.queue_update(failing)
    telegram.queue_update(telegram.message_update(unlucky, "/start"))
    assert (await sent_to(telegram, unlucky.id)).params["text"].startswith("Hi, Ed!")
    await telegram.wait_until_handled(failing)  # its failure is logged once its handling ends
    failed = [line for line in logs() if f"update id={failing['update_id']}" in line["event"]]
    assert len(failed) == 1 and failed[0]["level"] == "error"


async def test_an_update_whose_sender_goes_away_mid_body_is_left_for_its_next_delivery(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    logs: Callable[[], list[dict[str, Any]]],
    db: Database,
) -> None:
    settings = make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    runtime: Runtime = await start_app(settings)
    user = FakeUser(id=5103, first_name="Cy", language_code="en")
    update = telegram.message_update(user, "/start")
    body = json.dumps(update).encode()
    # Half the update, then the connection drops: nothing to read, nothing to answer.
    _, writer = await asyncio.open_connection("127.0.0.1", runtime.http_port)
    head = _head(
        "/telegram/webhook",
        f"X-Telegram-Bot-Api-Secret-Token: {WEBHOOK_SECRET}\r\nContent-Length: {len(body)}\r\n",
    )
    writer.write(head.encode() + body[: len(body) // 2])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    # Telegram delivers it again, whole: handled once, and the cut copy left no trace.
    url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
    assert await telegram.post_webhook(url, update, secret=WEBHOOK_SECRET) == 200
    assert (await sent_to(telegram, user.id)).params["text"].startswith("Hi, Cy!")
    assert await count(db, ProcessedUpdate, ProcessedUpdate.update_id == update["update_id"]) == 1
    lines = logs()
    assert _events(lines, "webhook.telegram.update_skipped") == []
    assert _events(lines, "webhook.telegram.update_failed") == []
