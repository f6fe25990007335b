"""What the admin feature needs from outside: a way to queue a broadcast's job (the job itself
is registered in `aisha.jobs.admin`) and the Messenger that sends each copy."""

from __future__ import annotations

import uuid
from typing import Protocol

from aisha.messaging import Messenger

__all__ = ["BROADCAST_JOB", "BroadcastQueue", "Messenger"]

BROADCAST_JOB = "admin.broadcast"


class BroadcastQueue(Protocol):
    async def __call__(self, broadcast_id: uuid.UUID, /) -> None:
        """Queue the job that sends the broadcast (idempotent: the job claims a lease first)."""
        ...
