"""Two-phase holds: reserve credits for a job, then resolve them exactly once.

A hold takes its amount off the balance now (one HOLD entry of minus the amount); later exactly one
of capture (the job succeeded: spend 0..amount, the rest comes back), release (it failed: all of
it comes back) or expiry (the recovery sweep, once the hold's time is up) writes one CAPTURE or
RELEASE entry returning `amount - captured_amount`. The conditional UPDATE of the hold row lets
exactly one resolution win. Lock order: the account row, then the hold row.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing import ids, pg
from aisha.billing.books import (
    Books,
    HoldLost,
    NewHold,
    Resolution,
    check_texts,
    is_amount,
    on_postgresql,
    replay_hold,
    replay_resolution,
)
from aisha.billing.errors import HoldAlreadyResolved, HoldNotFound, InvalidAmount
from aisha.billing.models import CreditHold, EntryKind, HoldStatus
from aisha.billing.results import HoldInfo, HoldResult, ResolutionResult
from aisha.clock import Clock

EXPIRED_DESCRIPTION = "ledger.hold_expired"


class Holds:
    def __init__(self, *, books: Books, clock: Clock, hold_ttl: timedelta) -> None:
        self._books = books
        self._clock = clock
        self._hold_ttl = hold_ttl

    async def hold(self, *, session: AsyncSession, new: NewHold) -> HoldResult:
        """Reserve `new.amount` (already checked positive): one statement on PostgreSQL, else portable."""
        check_texts(key=new.key, description=new.description, reference=new.reference)

        async def one_statement() -> HoldResult | None:
            now = self._clock.now()
            hold_id = ids.ordered_uuid()  # time-ordered: the expiry sweep takes the oldest first
            balance = await pg.hold(
                session,
                new,
                entry_id=ids.ordered_uuid(),
                hold_id=hold_id,
                now=now,
                expires_at=now + self._hold_ttl,
            )
            if balance is None:
                return None
            return HoldResult(hold_id=hold_id, amount=new.amount, balance=balance, replayed=False)

        async def write() -> HoldResult:
            hold_id, balance = await self._write_hold(session, new)
            return HoldResult(hold_id=hold_id, amount=new.amount, balance=balance, replayed=False)

        return await self._books.write_once(
            session,
            key=new.key,
            one_statement=one_statement,
            write=write,
            replay=lambda stored: replay_hold(stored, key=new.key, user_id=new.user_id, amount=new.amount),
        )

    async def _write_hold(self, session: AsyncSession, new: NewHold) -> tuple[uuid.UUID, int]:
        """The portable hold, inside the caller's savepoint: (hold id, balance after)."""
        balance, seq = await self._books.move(session, user_id=new.user_id, delta=-new.amount)
        now = self._clock.now()
        hold_id = ids.ordered_uuid()  # time-ordered: the expiry sweep takes the oldest first
        await session.execute(
            insert(CreditHold).values(
                id=hold_id,
                user_id=new.user_id,
                amount=new.amount,
                captured_amount=0,
                status=HoldStatus.ACTIVE,
                reference=new.reference,
                description=new.description,
                expires_at=now + self._hold_ttl,
                created_at=now,
                resolved_at=None,
            )
        )
        await self._books.insert_entry(
            session,
            user_id=new.user_id,
            kind=EntryKind.HOLD,
            amount=-new.amount,
            balance_after=balance,
            seq=seq,
            hold_id=hold_id,
            reference=new.reference,
            description=new.description,
            description_args=new.description_args,
            key=new.key,
            now=now,
        )
        return hold_id, balance

    async def resolve(self, *, session: AsyncSession, resolution: Resolution) -> ResolutionResult:
        """Capture, release or expire a hold: the conditional UPDATE lets exactly one win."""
        r = resolution
        check_texts(key=r.key, description=r.description, reference=None)
        if on_postgresql(session) and is_amount(r.spend) and r.spend >= 0:
            done = await self._resolve_in_one_statement(session, r)
            if done is not None:
                return done
            # Nothing written: the portable path below replays the key or says why not.
        hold, stored = await self._books.hold_and_entry(session, r.hold_id, r.key)
        if hold is None:
            raise HoldNotFound(r.hold_id)
        if not is_amount(r.spend) or not 0 <= r.spend <= hold.amount:
            raise InvalidAmount(f"capture must be between 0 and the held {hold.amount}, got {r.spend!r}")
        returned = hold.amount - r.spend
        if stored is not None:
            return replay_resolution(stored, hold=hold, key=r.key, kind=r.kind, returned=returned)
        if hold.status is not HoldStatus.ACTIVE:
            raise HoldAlreadyResolved(hold_id=r.hold_id, status=hold.status)
        try:
            async with session.begin_nested():
                balance, entry_id = await self._write_resolution(session, hold, r)
        except (IntegrityError, HoldLost) as exc:
            # Someone resolved it first: with this key it is our first result, else an error.
            stored = await self._books.stored_entry(session, r.key)
            current = await self._books.hold_info(session, r.hold_id)
            if stored is not None and current is not None:
                return replay_resolution(stored, hold=current, key=r.key, kind=r.kind, returned=returned)
            if isinstance(exc, HoldLost) and current is not None:
                raise HoldAlreadyResolved(hold_id=r.hold_id, status=current.status) from None
            raise
        return _written(r, returned=returned, balance=balance, entry_id=entry_id)

    async def _resolve_in_one_statement(
        self, session: AsyncSession, resolution: Resolution
    ) -> ResolutionResult | None:
        """`billing/pg.py`'s statement; None when it wrote nothing."""
        entry_id = ids.ordered_uuid()
        moved = await pg.resolve(session, resolution, entry_id=entry_id, now=self._clock.now())
        if moved is None:
            return None
        balance, returned = moved
        return _written(resolution, returned=returned, balance=balance, entry_id=entry_id)

    async def _write_resolution(
        self, session: AsyncSession, hold: HoldInfo, resolution: Resolution
    ) -> tuple[int, uuid.UUID]:
        """The portable resolution, inside the caller's savepoint: (balance after, entry id).

        Raises HoldLost when the hold was resolved meanwhile (the conditional UPDATE matched nothing)."""
        # Account first, hold second: the same lock order as hold() and every debit.
        returned = hold.amount - resolution.spend
        balance, seq = await self._books.move(session, user_id=hold.user_id, delta=returned)
        now = self._clock.now()
        conditions = [CreditHold.id == hold.id, CreditHold.status == HoldStatus.ACTIVE]
        if resolution.target is HoldStatus.EXPIRED:
            conditions.append(CreditHold.expires_at <= now)
        won = (
            await session.execute(
                update(CreditHold)
                .where(*conditions)
                .values(status=resolution.target, captured_amount=resolution.spend, resolved_at=now)
                .returning(CreditHold.id)
                .execution_options(synchronize_session=False)
            )
        ).first()
        if won is None:
            raise HoldLost
        entry_id = await self._books.insert_entry(
            session,
            user_id=hold.user_id,
            kind=resolution.kind,
            amount=returned,
            balance_after=balance,
            seq=seq,
            hold_id=hold.id,
            reference=hold.reference,
            description=resolution.description,
            description_args=resolution.description_args,
            key=resolution.key,
            now=now,
        )
        return balance, entry_id

    async def expire(self, *, session: AsyncSession, limit: int) -> list[ResolutionResult]:
        """Release up to `limit` active holds whose time is up; a hold resolved meanwhile is skipped."""
        now = self._clock.now()
        hold_ids = (
            await session.scalars(
                select(CreditHold.id)
                .where(CreditHold.status == HoldStatus.ACTIVE, CreditHold.expires_at <= now)
                # Accounts locked in one order by every sweep: concurrent sweeps can't deadlock.
                .order_by(CreditHold.user_id, CreditHold.id)
                .limit(limit)
            )
        ).all()
        results: list[ResolutionResult] = []
        for hold_id in hold_ids:
            try:
                result = await self.resolve(
                    session=session,
                    resolution=Resolution(
                        hold_id=hold_id,
                        target=HoldStatus.EXPIRED,
                        spend=0,
                        key=f"hold:{hold_id}:expire",
                        description=EXPIRED_DESCRIPTION,
                        description_args=None,
                    ),
                )
            except (HoldAlreadyResolved, HoldNotFound):
                continue
            if not result.replayed:
                results.append(result)
        return results


def _written(resolution: Resolution, *, returned: int, balance: int, entry_id: uuid.UUID) -> ResolutionResult:
    """A resolution this call wrote (not a replay), whichever path wrote it."""
    return ResolutionResult(
        hold_id=resolution.hold_id,
        status=resolution.target,
        captured=resolution.spend,
        returned=returned,
        balance=balance,
        entry_id=entry_id,
        replayed=False,
    )
