"""The admin feature's job: sending a broadcast (`admin.broadcast`), and its recovery sweep."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aisha.admin.ports import BroadcastQueue
from aisha.jobs.queue import JobQueue

if TYPE_CHECKING:
    from aisha.container import Services

BROADCAST_JOB = "admin.broadcast"


def broadcast_queue(queue: JobQueue) -> BroadcastQueue:
    """How the admin service queues a broadcast's job."""

    async def enqueue(broadcast_id: uuid.UUID) -> None:
        await queue.enqueue(BROADCAST_JOB, broadcast_id=str(broadcast_id))

    return enqueue


def register(services: Services) -> None:
    admin = services.admin

    async def broadcast_job(*, broadcast_id: str) -> None:
        await admin.run_broadcast(broadcast_id=uuid.UUID(broadcast_id))

    services.queue.register(BROADCAST_JOB, broadcast_job)
    services.recovery.register("admin.broadcasts", admin.sweep)
