"""The HTTP edges under abuse: oversized FAL webhooks are cut off at the cap, and odd but valid
Telegram updates get a logged 200 instead of a 5xx that Telegram would retry forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from aisha.api.fal import MAX_BODY_BYTES, WEBHOOK_PATH
from aisha.runtime import Runtime
from aisha.sandbox.fake_fal import FakeFalServer

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
    # malformed next request (uvicorn's 400); either way it never buffers the rest.
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
