"""How FAL gets a training archive, per storage mode, with the fake FAL really fetching it.

The fake FAL refuses loopback, private and single-label hosts as the real one can't reach them;
each test marks reachable only the address that stands in for a public one. ``localhost`` plays
the compose network's ``minio``: a name our processes resolve and FAL never will.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from aisha.avatars.models import AvatarStatus
from aisha.avatars.service import photo_prefix
from aisha.billing.models import EntryKind
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalServer
from aisha.storage.links import LinkSigner, link_secret
from tests.conftest import Database
from tests.e2e.conftest import eventually
from tests.e2e.test_avatars import (
    BONUS,
    PRICE,
    _balance,
    _entries,
    _seed_and_train,
    _status_is,
    _submitted,
    _texts_to,
    avatar_settings,
)
from tests.integration.conftest import S3Server, s3_bucket, s3_server

__all__ = ["avatar_settings", "s3_bucket", "s3_server"]  # fixtures, used by name

TRAINED = [f"{i:02d}.jpg" for i in range(1, 11)]


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server
        assert server.errors == []


@pytest.fixture
def s3_settings(
    avatar_settings: Callable[..., Any], s3_server: S3Server, s3_bucket: str
) -> Callable[..., Any]:
    """Settings on the test bucket, reached by the processes at ``localhost`` (like ``minio``)."""
    internal = s3_server.endpoint_url.replace("127.0.0.1", "localhost")

    def make(**overrides: Any) -> Any:
        values = {
            "storage_url": f"s3://{s3_bucket}",
            "s3_endpoint_url": internal,
            "s3_access_key": s3_server.access_key,
            "s3_secret_key": s3_server.secret_key,
            "s3_region": s3_server.region,
        }
        return avatar_settings(**(values | overrides))

    return make


async def _bucket_keys(s3_server: S3Server, bucket: str) -> list[str]:
    async with s3_server.raw_client() as client:
        listing = await client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


async def _trained_and_ready(
    app: Runtime, telegram: FakeTelegramServer, fal: FakeFalServer, db: Database, user: FakeUser
) -> tuple[uuid.UUID, str]:
    """Train a seeded avatar to the end; the archive URL FAL was given."""
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)
    assert job.payload["data_archive_format"] == "zip"
    assert await fal.complete(job.request_id) == 200  # the runner fetched the archive first
    assert fal.archives[job.request_id] == TRAINED
    assert await _status_is(db, avatar_id, AvatarStatus.READY)
    assert await _balance(app, user.id) == BONUS - PRICE
    assert any("is ready" in text for text in _texts_to(telegram, user))
    return avatar_id, str(job.payload["images_data_url"])


async def test_the_compose_stack_trains_through_the_apps_signed_link(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    s3_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    s3_server: S3Server,
    s3_bucket: str,
    db: Database,
) -> None:
    # deploy/: s3:// on an endpoint only the compose network knows, no S3_PUBLIC_ENDPOINT_URL,
    # and PUBLIC_BASE_URL (here this machine, standing in for nginx's public address).
    settings = s3_settings()
    app: Runtime = await start_app(settings)
    user = FakeUser(id=8101, language_code="en")
    avatar_id, url = await _trained_and_ready(app, telegram, fal, db, user)

    parts = urlsplit(url)
    assert url.startswith(
        f"{settings.public_base_url}/files/{photo_prefix(user.id, avatar_id)}/training.zip?"
    )
    assert set(parse_qs(parts.query)) == {"expires", "signature"}
    assert "localhost" not in url  # never the bucket's internal address
    # The archive (faces) and the photos are gone once training is over; only the kept LoRA stays.
    left = await _bucket_keys(s3_server, s3_bucket)
    assert [key for key in left if not key.startswith(f"loras/{user.id}/{avatar_id}/")] == []


async def test_a_public_bucket_endpoint_gets_presigned_links_on_that_host(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    s3_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    s3_server: S3Server,
    db: Database,
) -> None:
    # The bucket's outside address: the same server under another name (here its IP address).
    public = s3_server.endpoint_url
    settings = s3_settings(s3_public_endpoint_url=public, reachable=False)
    fal.reachable(public)  # only the bucket: the app's own address stays out of FAL's reach
    app: Runtime = await start_app(settings)
    user = FakeUser(id=8201, language_code="en")
    _, url = await _trained_and_ready(app, telegram, fal, db, user)

    assert url.startswith(f"{public}/")
    assert "X-Amz-Signature" in parse_qs(urlsplit(url).query)
    assert "/files/" not in url


async def test_with_no_public_address_the_archive_goes_to_fal_storage_and_expires(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    make_settings: Callable[..., Any],
    s3_server: S3Server,
    s3_bucket: str,  # set up before start_app, so the app (and its LoRA copy job) stops before it goes
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    # Long polling, S3 on an internal endpoint only: nothing FAL could fetch from us.
    settings = make_settings(
        storage_url=f"s3://{s3_bucket}",
        s3_endpoint_url=s3_server.endpoint_url.replace("127.0.0.1", "localhost"),
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_region=s3_server.region,
        fal_key=fal.key,
        fal_queue_url=fal.base_url,
        fal_rest_url=fal.base_url,
        fal_jwks_url=fal.jwks_url,
        avatar_poll_after_seconds=0,
    )
    app: Runtime = await start_app(settings)
    user = FakeUser(id=8301, language_code="en")
    avatar_id = await _seed_and_train(app, telegram, user, polling=True)
    job = await _submitted(fal)
    assert job.payload["images_data_url"].startswith(f"{fal.base_url}/files/upload-")
    [(name, lifecycle)] = fal.uploads
    assert name == "training.zip"
    assert lifecycle["X-Fal-Object-Lifecycle-Preference"] == '{"expiration_duration_seconds": 14400}'
    assert f"{photo_prefix(user.id, avatar_id)}/training.zip" not in await _bucket_keys(s3_server, s3_bucket)

    await fal.complete(job.request_id, deliver=False)
    assert fal.archives[job.request_id] == TRAINED
    await eventually(lambda: _status_is(db, avatar_id, AvatarStatus.SUBMITTED))
    await app.services.recovery.run_once()
    assert await _status_is(db, avatar_id, AvatarStatus.READY)
    assert await _balance(app, user.id) == BONUS - PRICE


@pytest.mark.parametrize("language", ["en", "ru"])
async def test_an_archive_fal_cannot_fetch_fails_the_training_and_gives_the_credits_back(
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    avatar_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
    language: str,
) -> None:
    # PUBLIC_BASE_URL on a loopback address nobody outside can reach (doctor warns about it).
    app: Runtime = await start_app(avatar_settings(reachable=False))
    user = FakeUser(id=8401 if language == "en" else 8402, language_code=language)
    avatar_id = await _seed_and_train(app, telegram, user)
    job = await _submitted(fal)

    await eventually(
        lambda: _status_is(db, avatar_id, AvatarStatus.FAILED),
    )
    assert job.request_id not in fal.archives
    assert await _balance(app, user.id) == BONUS
    assert [kind for kind, _ in await _entries(db, user.id)] == [
        EntryKind.BONUS,
        EntryKind.HOLD,
        EntryKind.RELEASE,
    ]
    told = _texts_to(telegram, user)[-1]
    if language == "en":
        assert "Training of <b>Seeded</b> failed: the training service reported an error." in told
        assert "You were not charged" in told
    else:
        assert "Обучение аватара <b>Seeded</b> не удалось" in told and "Деньги не списаны" in told


async def test_forged_and_expired_links_to_a_bucket_are_refused_without_reading_it(
    s3_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = s3_settings()
    app: Runtime = await start_app(settings)
    storage = app.services.storage
    await storage.put("avatars/1/a/training.zip", b"PK\x03\x04 faces")
    reads: list[str] = []
    for name in ("get", "size", "exists"):
        original = getattr(storage, name)

        def counted(key: str, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            reads.append(f"{_name} {key}")
            return _original(key, *args, **kwargs)

        monkeypatch.setattr(storage, name, counted)
    stream = storage.stream

    def counted_stream(key: str, **kwargs: Any) -> Any:
        reads.append(f"stream {key}")
        return stream(key, **kwargs)

    monkeypatch.setattr(storage, "stream", counted_stream)

    link = urlsplit(await storage.url("avatars/1/a/training.zip", expires_in=600))
    assert settings.bot_token is not None
    secret = link_secret(settings.bot_token.get_secret_value())
    expired = urlsplit(
        LinkSigner(secret, "http://x", now=lambda: 1_000.0).sign("avatars/1/a/training.zip", 60)
    )
    other_bot = urlsplit(LinkSigner(b"another deployment", "http://x").sign("avatars/1/a/training.zip", 60))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.http_port}") as client:
        forged = [
            f"/files/avatars/1/b/training.zip?{link.query}",  # another key
            f"{link.path}?{link.query[:-4]}0000",  # a changed signature
            f"{link.path}?{link.query.replace('expires=', 'expires=9')}",  # a later expiry
            link.path,  # unsigned
            f"{expired.path}?{expired.query}",
            f"{other_bot.path}?{other_bot.query}",
        ]
        for path in forged:
            assert (await client.get(path)).status_code == 403, path
        assert reads == []  # refused before storage is asked anything

        ok = await client.get(f"{link.path}?{link.query}")
        assert ok.status_code == 200 and ok.content == b"PK\x03\x04 faces"
        assert ok.headers["content-length"] == str(len(b"PK\x03\x04 faces"))
        assert ok.headers["content-type"] == "application/zip"
        assert reads == ["size avatars/1/a/training.zip", "stream avatars/1/a/training.zip"]
