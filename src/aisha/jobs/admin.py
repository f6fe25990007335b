"""The admin feature's job: sending a broadcast (`admin.broadcast`), and its recovery sweep."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aisha.admin.ports import BROADCAST_JOB

if TYPE_CHECKING:
    from aisha.container import Services


def register(services: Services) -> None:
    admin = services.admin

    async def broadcast_job(*, broadcast_id: str) -> None:
        await admin.run_broadcast(broadcast_id=uuid.UUID(broadcast_id))

    services.queue.register(BROADCAST_JOB, broadcast_job)
    services.recovery.register("admin.broadcasts", admin.sweep)
