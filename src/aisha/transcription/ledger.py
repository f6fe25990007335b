"""A transcript's row and its credits, each change in one short transaction of its own, and only
while the run that makes it still owns the row (its `claim`, a non-terminal status): a run that
lost the row, or a late failure, can't change it (`ClaimLost`).

The header's length sets the first hold (with a margin); the decoded length sets the price, and
takes a larger hold when it costs more; the capture is of that price, once the text arrived.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.errors import InsufficientCredits
from aisha.billing.models import HoldStatus
from aisha.billing.prices import PriceList, billable_minutes
from aisha.billing.service import HoldResult, LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.transcription.models import IN_FLIGHT, Transcript
from aisha.transcription.pipeline import Transcription

log = structlog.get_logger(__name__)

# The first hold covers the header's length plus this much (see `hold`).
HOLD_MARGIN = 0.05
HOLD_MARGIN_SECONDS = 2.0


class ClaimLost(Exception):
    """Another run took the row, or it has ended: this run stops and writes nothing more."""


@dataclass(frozen=True)
class Settled:
    """A delivered transcript once captured: the row, the credits taken, the recording to delete."""

    row: Transcript
    captured: int
    audio_key: str | None


class TranscriptLedger:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        ledger: LedgerService,
        prices: PriceList,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._ledger = ledger
        self._prices = prices

    async def owned(self, session: AsyncSession, transcript_id: uuid.UUID, claim: int) -> Transcript:
        """The row, locked, if this run still owns it and it is not finished; else ClaimLost."""
        row = await session.scalar(
            select(Transcript)
            .where(*_still_owned(transcript_id, claim))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if row is None:
            raise ClaimLost
        return row

    async def set(self, transcript_id: uuid.UUID, claim: int, **values: Any) -> None:
        """Update the row if this run still owns it and it is not finished; else ClaimLost."""
        async with unit_of_work(self._sessions) as session:
            updated = await session.scalar(
                update(Transcript)
                .where(*_still_owned(transcript_id, claim))
                .values(**values)
                .returning(Transcript.id)
            )
        if updated is None:
            raise ClaimLost

    async def hold(self, transcript_id: uuid.UUID, claim: int, *, duration: float) -> int:
        """Hold for the header's length plus the margin, or (if that is too much) for the length;
        the credits held. Raises InsufficientCredits."""
        exact = self._prices.transcription_price(duration)
        margin = self._prices.transcription_price(duration * (1 + HOLD_MARGIN) + HOLD_MARGIN_SECONDS)
        async with unit_of_work(self._sessions) as session:
            row = await self.owned(session, transcript_id, claim)
            for amount in dict.fromkeys((margin, exact)):
                try:
                    hold = await self._hold(
                        session, row, claim, amount=amount, duration=duration, step="hold"
                    )
                    break
                except InsufficientCredits:
                    if amount == exact:
                        raise
            row.status = JobStatus.RUNNING
            row.hold_id = hold.hold_id
            row.price = exact
            row.duration_ms = round(duration * 1000)
        return hold.amount

    async def _hold(
        self, session: AsyncSession, row: Transcript, claim: int, *, amount: int, duration: float, step: str
    ) -> HoldResult:
        """One hold for this run's claim; `step` keeps the header's and the decoded length's apart."""
        minutes = billable_minutes(duration)
        return await self._ledger.hold(
            session=session,
            user_id=row.user_id,
            amount=amount,
            key=f"transcript:{row.id}:{claim}:{step}",
            reference=f"transcript:{row.id}",
            description="ledger.transcription",
            description_args={"minutes": minutes, "count": minutes},
        )

    async def settle_price(
        self, transcript_id: uuid.UUID, claim: int, *, duration: float, held: int
    ) -> tuple[int, int]:
        """Price the decoded length, holding more if it costs more than `held`: the price, and the
        balance after its capture.

        Raises InsufficientCredits once the first hold is given back (committed).
        """
        price = self._prices.transcription_price(duration)
        refused: InsufficientCredits | None = None
        async with unit_of_work(self._sessions) as session:
            row = await self.owned(session, transcript_id, claim)
            row.duration_ms = round(duration * 1000)
            balance = await self._ledger.get_balance(session=session, user_id=row.user_id)
            if price > held:
                # The header was short of the truth: the first hold goes back and one for the real
                # length replaces it, in this same transaction, before any speech call.
                await self.give_back(session, row)
                try:
                    hold = await self._hold(
                        session, row, claim, amount=price, duration=duration, step="hold-decoded"
                    )
                except InsufficientCredits as error:
                    refused = error  # the release above still commits
                else:
                    row.hold_id, held, balance = hold.hold_id, price, hold.balance
            if refused is None:
                row.price = price
                row.provider_cost_micro_usd = self._prices.transcription_cost_micro_usd(duration)
        if refused is not None:
            raise refused
        return price, balance + held - price

    async def keep_result(
        self,
        transcript_id: uuid.UUID,
        claim: int,
        result: Transcription,
        *,
        text_key: str,
        srt_key: str | None,
    ) -> Transcript:
        """Commit the stored text with the delivery owed (the status stays RUNNING)."""
        async with unit_of_work(self._sessions) as session:
            row = await self.owned(session, transcript_id, claim)
            row.text = result.text
            row.text_key, row.srt_key = text_key, srt_key
            row.language = result.language
            row.duration_ms = round(result.duration * 1000)
            row.details = {**row.details, "chunks": len(result.chunks), "attempts": result.attempts}
        return row

    async def capture(self, transcript_id: uuid.UUID, claim: int, *, keep_audio: bool) -> Settled:
        """The text arrived: capture the price and mark the transcript done. The recording is not
        kept once its text is (unless the operator asks for it): its key is returned to delete."""
        async with unit_of_work(self._sessions) as session:
            row = await self.owned(session, transcript_id, claim)
            captured = 0
            hold = await self._ledger.get_hold(session=session, hold_id=row.hold_id) if row.hold_id else None
            if hold is not None and hold.status is HoldStatus.ACTIVE:
                capture = await self._ledger.capture(
                    session=session,
                    hold_id=hold.id,
                    amount=row.price,
                    key=f"transcript:{row.id}:capture",
                    description="ledger.transcription_done",
                )
                captured = capture.captured
            else:
                # The expiry sweep gave the hold back while the job ran: delivered, but free.
                log.warning("transcription.hold_gone", transcript_id=str(row.id), hold_id=str(row.hold_id))
            row.status = JobStatus.SUCCEEDED
            row.finished_at = self._clock.now()
            audio_key = None if keep_audio else row.audio_key
            if audio_key:
                row.audio_key = None
        return Settled(row=row, captured=captured, audio_key=audio_key)

    async def fail(
        self, transcript_id: uuid.UUID, claim: int, reason: str, *, required: int | None = None
    ) -> list[str]:
        """Mark the transcript failed and give any hold back; the keys of its files to delete.
        `required`: for a refusal for credits, what a top-up must cover to resume it."""
        async with unit_of_work(self._sessions) as session:
            row = await self.owned(session, transcript_id, claim)
            if row.hold_id is not None:
                await self.give_back(session, row)
            row.status, row.error, row.finished_at = JobStatus.FAILED, reason, self._clock.now()
            if required is not None:
                row.details = {**row.details, "required": required}
            files = [row.audio_key, row.text_key, row.srt_key]
            row.audio_key = row.text_key = row.srt_key = row.text = None
        return [key for key in files if key]

    async def give_back(self, session: AsyncSession, row: Transcript) -> None:
        """Release the row's hold (unless the expiry sweep already did) and forget it."""
        assert row.hold_id is not None
        hold = await self._ledger.get_hold(session=session, hold_id=row.hold_id)
        if hold is not None and hold.status is HoldStatus.ACTIVE:
            await self._ledger.release(
                session=session, hold_id=hold.id, key=f"transcript:{row.id}:release:{hold.id}"
            )
        row.hold_id = None


def _still_owned(transcript_id: uuid.UUID, claim: int) -> tuple[ColumnElement[bool], ...]:
    """The row is this run's (its claim) and not finished: the condition of every write of a run."""
    return (Transcript.id == transcript_id, Transcript.claim == claim, Transcript.status.in_(IN_FLIGHT))
