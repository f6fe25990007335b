"""The paid-operation primitive: the one way every paid feature (a training, a generation, a
transcription) starts work it will charge for, and the one place the rule "no call to Telegram, a
provider or storage while a transaction is open" is written down.

A paid operation has two halves, split by a commit:

1. **Start** (`PaidOperations.start`, inside the update's unit of work): take the user's lock
   (one paid operation starts at a time per user, also across processes), let the feature hold the
   credits and write its row (the intent), and queue the job only *after* that commit. If the
   commit fails nothing is queued and nothing is held; if the process dies right after it, the
   feature's sweep finds the committed row and queues it again.
2. **Run** (the feature's flow module, in a job): read the row in a short transaction and mark it
   as being submitted; call the provider with no transaction open; record the answer in a second
   transaction; then capture the hold when the user got the result, or release it when the work
   failed. A failed outside call never undoes money that has already moved: the hold stays until
   a transaction decides it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from aisha.db.session import after_commit

T = TypeVar("T")


class Busy(Exception):
    """Another request of the same user is starting or erasing something right now: try again in a
    moment. Nothing was held or written."""


class OperationLocks(Protocol):
    async def hold_for(self, session: AsyncSession, *, user_id: int) -> bool:
        """Take the user's lock until the session's unit of work ends; False while another holds it."""
        ...


class JobFigures(Protocol):
    """What a feature reports about its jobs for the operator's metrics."""

    async def job_failed(self, job: str, kind: str) -> None: ...

    async def generation_delivered(self, seconds: float) -> None: ...


class PaidOperations:
    def __init__(self, locks: OperationLocks) -> None:
        self._locks = locks

    async def start(
        self,
        session: AsyncSession,
        *,
        user_id: int,
        begin: Callable[[], Awaitable[T]],
        enqueue: Callable[[T], Awaitable[None]],
    ) -> T:
        """Lock → `begin` (hold the credits and write the intent, in `session`'s transaction) →
        `enqueue` once that transaction has committed. Raises Busy, or whatever `begin` raises (then
        the unit of work rolls back and nothing is queued)."""
        if not await self._locks.hold_for(session, user_id=user_id):
            raise Busy
        started = await begin()
        after_commit(session, lambda: enqueue(started))
        return started
