"""Two `aisha api` processes and one `aisha worker` on one PostgreSQL, one Redis and one storage.

The same update posted to both API processes is handled once; an avatar training started
through API #1 (its job goes through the Redis queue to the worker, which submits it to FAL with
API #1's webhook URL) is completed by FAL's webhook arriving at API #2.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from aisha.api import TELEGRAM_WEBHOOK_PATH
from aisha.avatars.models import Avatar, AvatarStatus
from aisha.billing.models import CreditEntry, EntryKind
from aisha.config import Settings
from aisha.db.session import unit_of_work
from aisha.runtime import Role, Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.fal import FakeFalServer
from aisha.users.models import User
from tests.conftest import Database
from tests.e2e.conftest import WEBHOOK_SECRET, count, eventually, free_port
from tests.e2e.test_avatars import BONUS, PRICE, enqueue_seeded_training

USER = FakeUser(id=8101, first_name="Scale", language_code="en")


@pytest.fixture
def db(postgres_db: Database) -> Database:
    """Many processes on one database: PostgreSQL only."""
    return postgres_db


@pytest.fixture
async def fal() -> AsyncIterator[FakeFalServer]:
    async with FakeFalServer() as server:
        yield server


@pytest.fixture
def cluster_settings(
    make_settings: Callable[..., Settings], fal: FakeFalServer, redis_url: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings of one process: everything shared but its own port and public URL."""

    def make(port: int, public_port: int | None = None) -> Settings:
        # This machine stands in for the public address FAL fetches training archives from.
        fal.reachable(f"http://127.0.0.1:{public_port or port}")
        return make_settings(
            redis_url=redis_url,
            storage_url=f"file://{tmp_path / 'shared-files'}",
            fal_key=fal.key,
            fal_queue_url=fal.base_url,
            fal_jwks_url=fal.jwks_url,
            public_base_url=f"http://127.0.0.1:{public_port or port}",
            webhook_secret=WEBHOOK_SECRET,
            http_port=port,
        )

    return make


async def _post(http: httpx.AsyncClient, runtime: Runtime, update: dict[str, Any]) -> int:
    response = await http.post(
        f"http://127.0.0.1:{runtime.http_port}{TELEGRAM_WEBHOOK_PATH}",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET},
    )
    return response.status_code


async def test_two_api_processes_and_a_worker_share_the_work(
    cluster_settings: Callable[..., Settings],
    start_app: Callable[..., Any],
    telegram: FakeTelegramServer,
    fal: FakeFalServer,
    db: Database,
) -> None:
    port1, port2 = free_port(), free_port()
    api1: Runtime = await start_app(cluster_settings(port1), Role.API)
    api2: Runtime = await start_app(cluster_settings(port2), Role.API)
    # The worker has no HTTP server; the webhooks of what it submits point at API #1.
    worker: Runtime = await start_app(cluster_settings(free_port(), public_port=port1), Role.WORKER)
    assert not api1.services.queue.in_process and not worker.services.queue.in_process

    # The same update at both API processes at once: handled once.
    start = telegram.message_update(USER, "/start")
    async with httpx.AsyncClient(timeout=30) as http:
        statuses = await asyncio.gather(_post(http, api1, start), _post(http, api2, start))
    assert statuses == [200, 200]
    welcomes = [c for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == USER.id]
    assert len(welcomes) == 1 and "I'm Aisha" in welcomes[0].params["text"]
    assert await count(db, User, User.telegram_id == USER.id) == 1

    # An avatar confirmed through API #1; its training job goes through Redis to the worker.
    async with unit_of_work(api1.services.sessions) as session:
        await api1.services.ledger.credit(
            session=session, user_id=USER.id, amount=BONUS, key="test:fund", kind=EntryKind.BONUS
        )
    avatar_id = await enqueue_seeded_training(api1, USER.id, name="Scaled")

    async with asyncio.timeout(30):
        job = (await fal.wait_submissions(1))[0]
    webhook = urlsplit(job.webhook_url or "")
    assert webhook.netloc == f"127.0.0.1:{port1}"  # the worker pointed FAL at API #1

    async def submitted() -> bool:
        async with db.sessions() as session:
            row = await session.get(Avatar, avatar_id)
            return row is not None and row.status is AvatarStatus.SUBMITTED

    await eventually(submitted)

    # FAL's webhook arrives at API #2 (behind the load balancer), then again at API #1.
    await fal.complete(job.request_id, deliver=False)
    at_api2 = webhook._replace(netloc=f"127.0.0.1:{port2}").geturl()
    assert await fal.deliver(job.request_id, url=at_api2) == 200
    assert await fal.deliver(job.request_id) == 200

    async with db.sessions() as session:
        row = await session.get(Avatar, avatar_id)
        assert row is not None and row.status is AvatarStatus.READY
        entries = (
            await session.execute(
                select(CreditEntry.kind, CreditEntry.amount)
                .where(CreditEntry.user_id == USER.id)
                .order_by(CreditEntry.created_at, CreditEntry.id)
            )
        ).all()
    assert [(kind, amount) for kind, amount in entries] == [
        (EntryKind.BONUS, BONUS),
        (EntryKind.HOLD, -PRICE),
        (EntryKind.CAPTURE, 0),  # captured once
    ]
    ready = [c for c in telegram.calls_of("sendMessage") if "is ready" in c.params.get("text", "")]
    assert len(ready) == 1
