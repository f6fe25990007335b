"""A broadcast Telegram would refuse is refused before anything is stored or queued."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from aisha.admin.broadcasts import BroadcastRules, Broadcasts
from aisha.admin.errors import BroadcastRefused
from aisha.admin.models import Broadcast
from aisha.clock import SystemClock
from aisha.db.session import unit_of_work
from tests.conftest import Database


async def test_a_refused_text_stores_and_queues_nothing(db: Database) -> None:
    queued: list[uuid.UUID] = []

    async def enqueue(broadcast_id: uuid.UUID) -> None:
        queued.append(broadcast_id)

    broadcasts = Broadcasts(
        sessions=db.sessions, clock=SystemClock(), messenger=None, rules=BroadcastRules(), enqueue=enqueue
    )
    with pytest.raises(BroadcastRefused) as refused:
        async with unit_of_work(db.sessions) as session:
            await broadcasts.start(session=session, text="<b>Sale <i>today</b>", created_by=900)
    assert refused.value.reason.startswith("can't parse entities: Unmatched end tag")
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Broadcast)) == 0
    assert queued == []

    async with unit_of_work(db.sessions) as session:
        sent = await broadcasts.start(session=session, text="<b>Sale</b> <i>today</i>", created_by=900)
    assert queued == [sent]
