"""Broadcasts: a message to every non-blocked user, and the job steps that send it.

The row is the truth: `create` stores it (RUNNING) in the caller's transaction and `start` queues
its job once that commits; the job (`run`) claims a lease, sends one copy at a time in ascending
Telegram id order and commits its progress after each, so a job started again (a restart, the
recovery `sweep`, one queued by the CLI) goes on after the last recipient and sends no one the
text twice. `stop` ends every running broadcast before its next copy.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.admin.errors import BroadcastRefused, EmptyBroadcast
from aisha.admin.models import Broadcast, BroadcastInfo, BroadcastStatus
from aisha.admin.ports import BroadcastQueue, Messenger
from aisha.clock import Clock
from aisha.db.session import after_commit, unit_of_work
from aisha.telegram_html import html_refusal
from aisha.users.models import User

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BroadcastRules:
    rate: float = 25.0  # messages per second, over all recipients
    lease: timedelta = timedelta(seconds=60)


class Broadcasts:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        messenger: Messenger | None,
        rules: BroadcastRules,
        enqueue: BroadcastQueue | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._messenger = messenger
        self._rules = rules
        self._enqueue = enqueue

    async def create(self, *, session: AsyncSession, text: str, created_by: int) -> uuid.UUID:
        """Store a broadcast; it is sent by the job (enqueued after commit, or found by the sweep).
        Raises BroadcastRefused, storing nothing, for a text Telegram would refuse: sent as HTML,
        it would fail for every single user."""
        refusal = html_refusal(text)
        if refusal is not None:
            raise BroadcastRefused(refusal)
        broadcast = Broadcast(
            id=uuid.uuid4(),
            text=text,
            created_by=created_by,
            status=BroadcastStatus.RUNNING,
            last_user_id=0,
            sent_count=0,
            failed_count=0,
            created_at=self._clock.now(),
        )
        session.add(broadcast)
        await session.flush()
        log.info("admin.broadcast_created", broadcast_id=str(broadcast.id), admin_id=created_by)
        return broadcast.id

    async def start(self, *, session: AsyncSession, text: str, created_by: int) -> uuid.UUID:
        """`create`, then queue the job once the caller's transaction has committed. Raises
        EmptyBroadcast for a text with nothing in it, BroadcastRefused for one Telegram would refuse."""
        if not text.strip():
            raise EmptyBroadcast()
        broadcast_id = await self.create(session=session, text=text.strip(), created_by=created_by)
        after_commit(session, lambda: self.enqueue(broadcast_id=broadcast_id))
        return broadcast_id

    async def stop(self, *, session: AsyncSession) -> int:
        """Stop every running broadcast; the job sees it before its next message."""
        result = await session.execute(
            update(Broadcast)
            .where(Broadcast.status == BroadcastStatus.RUNNING)
            .values(status=BroadcastStatus.STOPPED, finished_at=self._clock.now(), locked_until=None)
            .returning(Broadcast.id)
        )
        return len(result.all())

    async def info(self, *, session: AsyncSession, broadcast_id: uuid.UUID) -> BroadcastInfo | None:
        row = await session.get(Broadcast, broadcast_id, populate_existing=True)
        if row is None:
            return None
        return BroadcastInfo(id=row.id, status=row.status, sent=row.sent_count, failed=row.failed_count)

    async def enqueue(self, *, broadcast_id: uuid.UUID) -> None:
        if self._enqueue is not None:
            await self._enqueue(broadcast_id)

    async def sweep(self) -> int:
        """Re-drive running broadcasts no job holds (a restart, a lost job, one queued by the CLI)."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            ids = list(
                await session.scalars(
                    select(Broadcast.id).where(
                        Broadcast.status == BroadcastStatus.RUNNING,
                        or_(Broadcast.locked_until.is_(None), Broadcast.locked_until < now),
                    )
                )
            )
        for broadcast_id in ids:
            await self.enqueue(broadcast_id=broadcast_id)
        return len(ids)

    async def run(self, *, broadcast_id: uuid.UUID) -> None:
        """The job: send to every non-blocked user after `last_user_id`, in id order, committing the
        progress after each one; stops when the broadcast is stopped or another job holds it."""
        if self._messenger is None:
            raise RuntimeError("broadcasts are sent by a process with a bot (aisha run or aisha worker)")
        messenger = self._messenger
        if not await self._claim(broadcast_id):
            log.info("broadcast.not_claimed", broadcast_id=str(broadcast_id))
            return
        interval = 1.0 / self._rules.rate if self._rules.rate > 0 else 0.0
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        while True:
            step = await self._next(broadcast_id)
            if step is None:
                return
            recipient, text = step
            delay = next_send - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_send = max(next_send, loop.time()) + interval
            sent = True
            try:
                await messenger.send_text(recipient, text)
            except Exception as error:  # a user who blocked the bot, a deleted chat: go on
                sent = False
                log.warning("broadcast.send_failed", user_id=recipient, error=type(error).__name__)
            await self._record(broadcast_id, recipient, sent=sent)

    async def _next(self, broadcast_id: uuid.UUID) -> tuple[int, str] | None:
        """The next recipient and the text; None when the broadcast is over (marked DONE when no
        one is left) or no longer running."""
        async with unit_of_work(self._sessions) as session:
            row = await session.get(Broadcast, broadcast_id, populate_existing=True)
            if row is None or row.status is not BroadcastStatus.RUNNING:
                return None
            recipient = await session.scalar(
                select(User.telegram_id)
                .where(User.telegram_id > row.last_user_id, User.is_blocked.is_(False))
                .order_by(User.telegram_id)
                .limit(1)
            )
            if recipient is None:
                row.status = BroadcastStatus.DONE
                row.finished_at = self._clock.now()
                row.locked_until = None
                log.info("broadcast.done", broadcast_id=str(broadcast_id), sent=row.sent_count)
                return None
            return recipient, row.text

    async def _record(self, broadcast_id: uuid.UUID, recipient: int, *, sent: bool) -> None:
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(Broadcast)
                .where(Broadcast.id == broadcast_id)
                .values(
                    last_user_id=recipient,
                    sent_count=Broadcast.sent_count + (1 if sent else 0),
                    failed_count=Broadcast.failed_count + (0 if sent else 1),
                    locked_until=self._clock.now() + self._rules.lease,
                )
            )

    async def _claim(self, broadcast_id: uuid.UUID) -> bool:
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            result = await session.execute(
                update(Broadcast)
                .where(
                    Broadcast.id == broadcast_id,
                    Broadcast.status == BroadcastStatus.RUNNING,
                    or_(Broadcast.locked_until.is_(None), Broadcast.locked_until < now),
                )
                .values(locked_until=now + self._rules.lease)
                .returning(Broadcast.id)
            )
            return result.scalar_one_or_none() is not None
