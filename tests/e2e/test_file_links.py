"""Signed, expiring links to stored files, served by the HTTP app (how FAL fetches archives)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from aisha.runtime import Runtime
from aisha.storage.links import LinkSigner, link_secret
from tests.e2e.conftest import WEBHOOK_SECRET


async def test_signed_link_serves_the_file_and_refuses_tampering(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    settings = make_settings(public_base_url="https://bot.example.com", webhook_secret=WEBHOOK_SECRET)
    runtime: Runtime = await start_app(settings)
    storage = runtime.services.storage
    await storage.put("avatars/a1/train.zip", b"PK\x03\x04 archive bytes")

    link = await storage.url("avatars/a1/train.zip", expires_in=600)
    assert link.startswith("https://bot.example.com/files/avatars/a1/train.zip?")
    local = f"http://127.0.0.1:{runtime.http_port}"
    parts = urlsplit(link)
    async with httpx.AsyncClient(base_url=local) as client:
        ok = await client.get(f"{parts.path}?{parts.query}")
        assert ok.status_code == 200 and ok.content == b"PK\x03\x04 archive bytes"
        # What a fetcher may check first (FAL's runner does): the size and type, and no body, which
        # would be taken for the next answer on this connection.
        head = await client.head(f"{parts.path}?{parts.query}")
        assert (head.status_code, head.headers["content-length"]) == (200, str(len(ok.content)))
        assert head.headers["content-type"] == "application/zip"

        other_key = await client.get(f"/files/avatars/a2/train.zip?{parts.query}")
        assert other_key.status_code == 403
        bad_signature = await client.get(f"{parts.path}?{parts.query[:-4]}0000")
        assert bad_signature.status_code == 403
        unsigned = await client.get(parts.path)
        assert unsigned.status_code == 403

        assert settings.bot_token is not None
        past = LinkSigner(link_secret(settings.bot_token.get_secret_value()), local, now=lambda: 1_000.0)
        expired = await client.get(
            urlsplit(past.sign("avatars/a1/train.zip", 60)).path
            + "?"
            + urlsplit(past.sign("avatars/a1/train.zip", 60)).query
        )
        assert expired.status_code == 403

        missing = LinkSigner(link_secret(settings.bot_token.get_secret_value()), local).sign(
            "avatars/none.zip", 60
        )
        assert (await client.get(missing)).status_code == 404
