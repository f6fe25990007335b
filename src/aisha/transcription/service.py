"""Transcription as a paid job: accept a recording, hold credits for what its header claims,
price it by what it really holds, transcribe, deliver, and capture only what was delivered.

The handler only records the request (a `Transcript` row, PENDING) and enqueues `run`; the job
does the slow work with no database transaction open, and writes each step in a short one; no
call to Telegram, the speech API or storage happens inside one. The row is the truth:

- A run takes the row by bumping its `claim` (PENDING, or SUBMITTED/RUNNING with no progress for
  `stale_after`), and every later write is conditional on that claim and a non-terminal status:
  a second run for the same row stops before any speech call, and a late failure can't touch a
  delivered result.
- The header's duration sets the first hold (with a margin); the decoded length, known before any
  speech call, sets the price: more than held takes a larger hold (or refuses and gives the hold
  back); past the maximum refuses. Capture happens on the decoded length once the text arrived.
- The text is committed (delivery owed) before it is sent; a run that finds it re-sends it.
- A lost or crashed run is picked up again by the recovery sweep: a hold left by a run that died
  before its result is given back and the next run starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.errors import InsufficientCredits
from aisha.billing.models import HoldStatus
from aisha.billing.prices import PriceList, billable_minutes
from aisha.billing.service import HoldResult, LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.i18n import Texts, Translator
from aisha.jobs.metrics import JobMetrics
from aisha.messaging import Button, FileTooLarge, Messenger, NotEnoughRoom
from aisha.storage import ObjectStorage
from aisha.transcription.audio import AudioError, AudioTooLong, FFmpegError
from aisha.transcription.merge import split_message
from aisha.transcription.models import Transcript
from aisha.transcription.pipeline import (
    LanguageNotSupported,
    Transcription,
    TranscriptionFailed,
    TranscriptionPipeline,
)
from aisha.users.models import User

log = structlog.get_logger(__name__)

JOB_NAME = "transcription.run"
READ_CHUNK = 256 * 1024
# A message longer than this also arrives as a .txt file, easier to keep and share.
FILE_THRESHOLD_CHARS = 3000
MESSAGE_LIMIT = 3500
IN_FLIGHT = (JobStatus.PENDING, JobStatus.SUBMITTED, JobStatus.RUNNING)
# A row taken this many times without a result is failed (its hold given back) instead.
MAX_RUNS = 3
# The first hold covers the header's length plus this much (see `_run`).
HOLD_MARGIN = 0.05
HOLD_MARGIN_SECONDS = 2.0
# The top-up button under a refusal for credits carries the transcript, so the top-up can resume it.
TOPUP_CALLBACK = "trtop:"
REFUSED_FOR_CREDITS = "insufficient_credits"


def topup_callback(transcript_id: uuid.UUID) -> str:
    return TOPUP_CALLBACK + transcript_id.hex


class TooManyTranscriptions(Exception):
    """The user already has the most transcriptions running that the operator allows."""

    def __init__(self, limit: int, *, running: int) -> None:
        self.limit = limit
        self.running = running
        super().__init__(f"{running} transcriptions in flight, at most {limit} allowed")


@dataclass(frozen=True)
class RefusedRecording:
    """A recording whose transcription was refused for credits: what it needed, and the file."""

    media: IncomingMedia
    required: int


@dataclass(frozen=True)
class IncomingMedia:
    """A recording a user sent, as Telegram described it."""

    user_id: int
    chat_id: int
    message_id: int
    file_id: str
    kind: str  # voice, audio, video, video_note, document
    file_name: str | None = None
    file_size: int | None = None


@dataclass(frozen=True)
class TranscriptionSettings:
    keep_audio: bool = False
    model: str = "whisper-1"
    # A running job that hasn't reported progress for this long is taken to be lost.
    stale_after: timedelta = timedelta(minutes=30)
    max_in_flight: int = 2  # per user


@dataclass
class _Run:
    """What one execution of the job carries between its steps."""

    transcript: Transcript
    texts: Texts
    work: Path
    claim: int  # the row's claim number this run took: its writes are conditional on it
    status_message_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    held: int = 0  # credits on the active hold
    price: int = 0  # of the decoded length


class _ClaimLost(Exception):
    """Another run took the row, or it has ended: this run stops and writes nothing more."""


def too_large_text(t: Texts, error: FileTooLarge) -> str:
    """Telegram's 20 MB for bots on the public Bot API, or the operator's cap on a local one."""
    key = "transcription.error.too_large" if error.public_api else "transcription.error.too_large_local"
    return t(key, limit_mb=error.limit // 2**20)


def format_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TranscriptionService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        ledger: LedgerService,
        prices: PriceList,
        storage: ObjectStorage,
        messenger: Messenger,
        pipeline: TranscriptionPipeline | None,
        translator: Translator,
        settings: TranscriptionSettings,
        metrics: JobMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._ledger = ledger
        self._prices = prices
        self._storage = storage
        self._messenger = messenger
        self._pipeline = pipeline
        self._translator = translator
        self._settings = settings
        self._metrics = metrics or JobMetrics()

    @property
    def available(self) -> bool:
        """False when no speech API is configured (no OPENAI_API_KEY)."""
        return self._pipeline is not None

    # --- inside an update --------------------------------------------------------------------

    async def accept(self, session: AsyncSession, *, media: IncomingMedia) -> uuid.UUID:
        """Record the request; the caller enqueues `run` after its transaction commits.

        Raises FileTooLarge, NotEnoughRoom (what can't be downloaded is refused at once: no row,
        no hold), TooManyTranscriptions. The caller holds the user's operation lock, so two
        requests can't both pass the count.
        """
        await self._messenger.check_download(media.file_size)
        running = int(
            await session.scalar(
                select(func.count())
                .select_from(Transcript)
                .where(Transcript.user_id == media.user_id, Transcript.status.in_(IN_FLIGHT))
            )
            or 0
        )
        if running >= self._settings.max_in_flight:
            raise TooManyTranscriptions(self._settings.max_in_flight, running=running)
        transcript = Transcript(
            user_id=media.user_id,
            status=JobStatus.PENDING,
            source_kind=media.kind,
            file_name=media.file_name,
            model=self._settings.model,
            details={
                "file_id": media.file_id,
                "file_size": media.file_size,
                "chat_id": media.chat_id,
                "message_id": media.message_id,
            },
        )
        session.add(transcript)
        await session.flush()
        return transcript.id

    async def refused_for_credits(
        self, session: AsyncSession, *, user_id: int, transcript_id: uuid.UUID | None
    ) -> RefusedRecording | None:
        """The user's recording whose transcription was refused for credits; None for anything else
        (another user's, one that ran, a tampered id)."""
        row = await session.get(Transcript, transcript_id) if transcript_id is not None else None
        if (
            row is None
            or row.user_id != user_id
            or row.status != JobStatus.FAILED
            or row.error != REFUSED_FOR_CREDITS
        ):
            return None
        details = row.details
        media = IncomingMedia(
            user_id=user_id,
            chat_id=int(details["chat_id"]),
            message_id=int(details["message_id"]),
            file_id=str(details["file_id"]),
            kind=row.source_kind,
            file_name=row.file_name,
            file_size=details.get("file_size"),
        )
        return RefusedRecording(media=media, required=int(details.get("required", 0)))

    async def list_for(
        self, session: AsyncSession, *, user_id: int, limit: int, offset: int
    ) -> tuple[list[Transcript], int]:
        mine = (Transcript.user_id == user_id, Transcript.status == JobStatus.SUCCEEDED)
        total = await session.scalar(select(func.count()).select_from(Transcript).where(*mine))
        rows = await session.scalars(
            select(Transcript).where(*mine).order_by(Transcript.created_at.desc()).limit(limit).offset(offset)
        )
        return list(rows), int(total or 0)

    async def get_owned(
        self, session: AsyncSession, *, user_id: int, transcript_id: uuid.UUID
    ) -> Transcript | None:
        """The transcript if it is this user's and finished; None for anyone else's (or none)."""
        transcript = await session.get(Transcript, transcript_id)
        if transcript is None or transcript.user_id != user_id or transcript.status != JobStatus.SUCCEEDED:
            return None
        return transcript

    async def delete(self, session: AsyncSession, *, user_id: int, transcript_id: uuid.UUID) -> bool:
        transcript = await self.get_owned(session, user_id=user_id, transcript_id=transcript_id)
        if transcript is None:
            return False
        for key in (transcript.audio_key, transcript.text_key, transcript.srt_key):
            if key:
                await self._storage.delete(key)
        await session.delete(transcript)
        return True

    async def read_file(self, key: str) -> bytes:
        return await self._storage.get(key)

    # --- the job -------------------------------------------------------------------------------

    async def run(self, *, transcript_id: str) -> None:
        """Drive one transcript to the end. Safe to call again, and concurrently, for the same id."""
        claimed = await self._claim(uuid.UUID(transcript_id))
        if claimed is None:
            return
        transcript, texts, claim = claimed
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aisha-transcript-"))
        state = _Run(
            transcript,
            texts,
            work,
            claim,
            transcript.details.get("status_message_id"),
            dict(transcript.details),
        )
        try:
            if claim > MAX_RUNS and transcript.text_key is None:
                # Runs before this one all died (a crash, Telegram or storage down): stop trying.
                log.error("transcription.gave_up", transcript_id=transcript_id, runs=claim - 1)
                await self._fail(state, "gave_up", texts("transcription.error.internal"))
            elif transcript.text_key is not None:
                await self._deliver_and_settle(state)  # the result was kept; only its delivery is owed
            else:
                await self._run(state)
        except _ClaimLost:
            log.info("transcription.claim_lost", transcript_id=transcript_id, claim=claim)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _claim(self, transcript_id: uuid.UUID) -> tuple[Transcript, Texts, int] | None:
        """Take the row unless it is finished or another run is alive on it (recent progress).

        The claim number goes up with each run that takes the row, and every later write of this
        run is conditional on it (see `_owned`), so a run that lost the row can't change it.
        """
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            claim = await session.scalar(
                update(Transcript)
                .where(
                    Transcript.id == transcript_id,
                    or_(
                        Transcript.status == JobStatus.PENDING,
                        Transcript.status.in_((JobStatus.SUBMITTED, JobStatus.RUNNING))
                        & (Transcript.updated_at < now - self._settings.stale_after),
                    ),
                )
                .values(claim=Transcript.claim + 1, updated_at=now)
                .returning(Transcript.claim)
            )
            if claim is None:
                return None
            transcript = await session.get(Transcript, transcript_id, populate_existing=True)
            assert transcript is not None
            if transcript.text_key is None:
                # A run before this one died before it had a result: its hold goes back, and
                # this run starts over from the download.
                if transcript.hold_id is not None:
                    await self._give_back(session, transcript)
                transcript.status = JobStatus.SUBMITTED
            user = await session.get(User, transcript.user_id)
            language = user.language if user else self._translator.default_locale
            return transcript, self._translator.bind(language), claim

    async def _run(self, run: _Run) -> None:
        t, transcript = run.texts, run.transcript
        chat_id = int(run.details["chat_id"])
        await self._status(run, t("transcription.status.downloading"))
        source = run.work / f"source{_suffix(transcript.file_name)}"
        try:
            # The disk may have filled since the file was accepted: checked again before Telegram
            # is asked (a local Bot API server fetches the file on getFile).
            await self._messenger.check_download(run.details.get("file_size"))
            await self._messenger.download(str(run.details["file_id"]), source)
        except FileTooLarge as error:
            await self._fail(run, "too_large", too_large_text(t, error))
            return
        except NotEnoughRoom:
            await self._fail(run, "no_room", t("transcription.error.no_room"))
            return
        except Exception as error:  # Telegram refused or dropped the download; nothing is held yet
            log.warning("transcription.download_failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, "download_failed", t("transcription.error.download_failed"))
            return
        try:
            pipeline = self._require_pipeline()
            info = await pipeline.probe(source)
        except AudioError as error:
            await self._fail(run, error.reason.value, t(f"transcription.error.{error.reason.value}"))
            return
        except FFmpegError as error:  # ffmpeg itself broke: our fault, not the file's
            log.error("transcription.ffmpeg_failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, "ffmpeg_failed", t("transcription.error.internal"))
            return

        # The header's length is only a claim (a file can say 2 s and hold an hour): it sets the
        # first hold, with a margin so that a header a little short (rounding, a VBR estimate)
        # rarely needs a second one; the decoded length below sets the price.
        try:
            await self._hold(run, duration=info.duration)
        except InsufficientCredits as error:
            await self._fail(
                run,
                REFUSED_FOR_CREDITS,
                t(
                    "billing.insufficient",
                    required=error.required,
                    balance=error.balance,
                    shortfall=error.shortfall,
                    count=error.shortfall,
                ),
                buttons=[[Button(t("billing.topup_button"), topup_callback(transcript.id))]],
                required=error.required,
            )
            return

        audio_key = f"transcripts/{transcript.user_id}/{transcript.id}/audio{source.suffix or '.bin'}"
        await self._storage.put(audio_key, _read_file(source))
        await self._set(run, audio_key=audio_key)

        try:
            audio_dir = run.work / "audio"
            await asyncio.to_thread(audio_dir.mkdir)
            prepared = await pipeline.prepare(source, audio_dir, info=info)
        except AudioTooLong as error:
            key = "transcription.error.too_long_real" if error.exact else "transcription.error.too_long_over"
            limit = format_duration(error.limit)
            await self._fail(run, "too_long", t(key, duration=format_duration(error.duration), limit=limit))
            return
        except AudioError as error:
            await self._fail(run, error.reason.value, t(f"transcription.error.{error.reason.value}"))
            return
        except FFmpegError as error:
            log.error("transcription.ffmpeg_failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, "ffmpeg_failed", t("transcription.error.internal"))
            return

        try:
            balance = await self._settle_price(run, duration=prepared.duration)
        except InsufficientCredits as error:
            await self._fail(
                run,
                REFUSED_FOR_CREDITS,
                t(
                    "transcription.error.not_enough_for",
                    duration=format_duration(prepared.duration),
                    minutes=billable_minutes(prepared.duration),
                    price=error.required,
                    balance=error.balance,
                    count=error.required,
                ),
                buttons=[[Button(t("billing.topup_button"), topup_callback(transcript.id))]],
                required=error.required,
            )
            return
        header = t(
            "transcription.status.header",
            duration=format_duration(prepared.duration),
            price=run.price,
            balance=balance,
            count=run.price,
        )
        await self._status(run, header + "\n" + t("transcription.status.working"))

        async def progress(done: int, total: int) -> None:
            await self._set(run, updated_at=self._clock.now())
            if total > 1:
                await self._status(
                    run, header + "\n" + t("transcription.status.chunks", done=done, total=total)
                )

        with contextlib.suppress(Exception):
            await self._messenger.send_chat_action(chat_id, "typing")
        user_language = await self._transcription_language(transcript.user_id)
        try:
            result = await pipeline.transcribe_prepared(
                prepared, language=user_language, on_progress=progress
            )
        except LanguageNotSupported:  # an English-only local model, asked for Russian
            text = t("transcription.error.language_unsupported")
            await self._fail(run, "language_unsupported", text)
            return
        except (TranscriptionFailed, AudioError, FFmpegError) as error:
            log.warning("transcription.failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, "provider_failed", t("transcription.error.provider_failed"))
            return
        await self._keep_result(run, result)
        await self._deliver_and_settle(run)

    def _require_pipeline(self) -> TranscriptionPipeline:
        if self._pipeline is None:
            raise RuntimeError("transcription is not configured: set OPENAI_API_KEY")
        return self._pipeline

    async def _hold(self, run: _Run, *, duration: float) -> None:
        """Hold for the header's length plus the margin, or (if that is too much) for the length."""
        exact = self._prices.transcription_price(duration)
        margin = self._prices.transcription_price(duration * (1 + HOLD_MARGIN) + HOLD_MARGIN_SECONDS)
        async with unit_of_work(self._sessions) as session:
            row = await self._owned(session, run)
            for amount in dict.fromkeys((margin, exact)):
                try:
                    hold = await self._hold_credits(
                        session, run, amount=amount, duration=duration, step="hold"
                    )
                    break
                except InsufficientCredits:
                    if amount == exact:
                        raise
            row.status = JobStatus.RUNNING
            row.hold_id = hold.hold_id
            row.price = exact
            row.duration_ms = round(duration * 1000)
        run.held = hold.amount

    async def _hold_credits(
        self, session: AsyncSession, run: _Run, *, amount: int, duration: float, step: str
    ) -> HoldResult:
        """One hold for this run's claim; `step` keeps the header's and the decoded length's apart."""
        transcript = run.transcript
        return await self._ledger.hold(
            session=session,
            user_id=transcript.user_id,
            amount=amount,
            key=f"transcript:{transcript.id}:{run.claim}:{step}",
            reference=f"transcript:{transcript.id}",
            description="ledger.transcription",
            description_args=_minutes(duration),
        )

    async def _settle_price(self, run: _Run, *, duration: float) -> int:
        """Price the decoded length, holding more if it costs more than held; the balance after capture.

        Raises InsufficientCredits once the first hold is given back (committed).
        """
        transcript = run.transcript
        price = self._prices.transcription_price(duration)
        refused: InsufficientCredits | None = None
        async with unit_of_work(self._sessions) as session:
            row = await self._owned(session, run)
            row.duration_ms = round(duration * 1000)
            balance = await self._ledger.get_balance(session=session, user_id=transcript.user_id)
            if price > run.held:
                # The header was short of the truth: the first hold goes back and one for the real
                # length replaces it, in this same transaction, before any speech call.
                await self._give_back(session, row)
                try:
                    hold = await self._hold_credits(
                        session, run, amount=price, duration=duration, step="hold-decoded"
                    )
                except InsufficientCredits as error:
                    refused = error  # the release above still commits
                else:
                    row.hold_id, run.held, balance = hold.hold_id, price, hold.balance
            if refused is None:
                row.price = price
                row.provider_cost_micro_usd = self._prices.transcription_cost_micro_usd(duration)
        if refused is not None:
            raise refused
        run.price = price
        return balance + run.held - price

    async def _keep_result(self, run: _Run, result: Transcription) -> None:
        """Store the text, then commit it with the delivery owed (status stays RUNNING)."""
        transcript = run.transcript
        # Under this run's claim, so a run that lost the row can't overwrite the files of the one
        # that has it.
        base = f"transcripts/{transcript.user_id}/{transcript.id}/{run.claim}"
        text_key = f"{base}/transcript.txt"
        await self._storage.put(text_key, result.text.encode())
        srt = result.srt
        srt_key = f"{base}/transcript.srt" if srt else None
        if srt_key and srt:
            await self._storage.put(srt_key, srt.encode())
        try:
            async with unit_of_work(self._sessions) as session:
                row = await self._owned(session, run)
                row.text = result.text
                row.text_key, row.srt_key = text_key, srt_key
                row.language = result.language
                row.duration_ms = round(result.duration * 1000)
                row.details = {**row.details, "chunks": len(result.chunks), "attempts": result.attempts}
                run.transcript = row
        except _ClaimLost:
            for key in (text_key, srt_key):
                if key:
                    await self._storage.delete(key)
            raise

    async def _deliver_and_settle(self, run: _Run) -> None:
        """Send the kept text, then capture if it arrived and release if it didn't.

        Fair to the user: a transcript that never reached them is not charged (and not kept, so
        it can't be read later for free). It counts as delivered once every text message was
        accepted by Telegram; the .txt and .srt files are copies of it, sent after the capture.
        A crash between sending and settling sends it again on the next run: at least once,
        charged once.
        """
        row, t = run.transcript, run.texts
        chat_id = int(run.details["chat_id"])
        text = row.text or ""
        duration = format_duration(row.duration_ms / 1000)
        await self._status(run, t("transcription.status.done", duration=duration))
        # Escaped, since messages are HTML; the margin keeps an escaped part within Telegram's limit.
        parts = split_message(text, MESSAGE_LIMIT) if text.strip() else [t("transcription.empty")]
        try:
            for part in parts:
                await self._messenger.send_text(
                    chat_id, html.escape(part, quote=False), reply_to=run.details.get("message_id")
                )
        except Exception as error:
            log.warning("transcription.undelivered", transcript_id=str(row.id), error=str(error))
            await self._fail(run, "undelivered", t("transcription.error.undelivered"))
            return
        async with unit_of_work(self._sessions) as session:
            row = await self._owned(session, run)
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
            # The recording is not kept once its text is (unless the operator asks for it).
            audio_key = None if self._settings.keep_audio else row.audio_key
            if audio_key:
                row.audio_key = None
            text_key, srt_key = row.text_key, row.srt_key
        if audio_key:
            await self._storage.delete(audio_key)
        log.info(
            "transcription.succeeded",
            transcript_id=str(row.id),
            seconds=round(row.duration_ms / 1000, 1),
            captured=captured,
        )
        for name, key, wanted in (
            ("transcript.txt", text_key, len(text) > FILE_THRESHOLD_CHARS),
            ("transcript.srt", srt_key, True),
        ):
            if key and wanted:
                try:
                    await self._messenger.send_document(
                        chat_id, file_name=name, data=await self._storage.get(key)
                    )
                except Exception as error:  # the text itself arrived; /transcripts has the file
                    log.warning("transcription.file_undelivered", transcript_id=str(row.id), error=str(error))

    async def _fail(
        self,
        run: _Run,
        code: str,
        message: str,
        *,
        buttons: list[list[Button]] | None = None,
        required: int | None = None,
    ) -> None:
        """End the transcript as failed: give any hold back, drop what was kept, tell the user once.

        Does nothing (raises _ClaimLost) when another run owns the row or it already ended, so a
        late failure never overwrites a delivered result.
        """
        async with unit_of_work(self._sessions) as session:
            row = await self._owned(session, run)
            if row.hold_id is not None:
                await self._give_back(session, row)
            row.status, row.error, row.finished_at = JobStatus.FAILED, code, self._clock.now()
            if required is not None:  # a refusal for credits: what a top-up must cover to resume it
                row.details = {**row.details, "required": required}
            files = [row.audio_key, row.text_key, row.srt_key]
            row.audio_key = row.text_key = row.srt_key = row.text = None
        for key in files:
            if key:
                await self._storage.delete(key)
        await self._status(run, message, buttons=buttons)
        await self._metrics.job_failed(JOB_NAME, code)

    async def _owned(self, session: AsyncSession, run: _Run) -> Transcript:
        """The row, locked, if this run still owns it and it is not finished; else _ClaimLost."""
        row = await session.scalar(
            select(Transcript)
            .where(
                Transcript.id == run.transcript.id,
                Transcript.claim == run.claim,
                Transcript.status.in_(IN_FLIGHT),
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if row is None:
            raise _ClaimLost
        return row

    async def _give_back(self, session: AsyncSession, row: Transcript) -> None:
        """Release the row's hold (unless the expiry sweep already did) and forget it."""
        assert row.hold_id is not None
        hold = await self._ledger.get_hold(session=session, hold_id=row.hold_id)
        if hold is not None and hold.status is HoldStatus.ACTIVE:
            await self._ledger.release(
                session=session, hold_id=hold.id, key=f"transcript:{row.id}:release:{hold.id}"
            )
        row.hold_id = None

    async def _status(self, run: _Run, text: str, *, buttons: list[list[Button]] | None = None) -> None:
        """One status message per transcript, edited in place, never repeated.

        Best effort: a status Telegram refuses doesn't stop the job; the delivery decides.
        """
        chat_id = int(run.details["chat_id"])
        try:
            if run.status_message_id is None:
                run.status_message_id = await self._messenger.send_text(
                    chat_id, text, buttons=buttons, reply_to=run.details.get("message_id")
                )
            else:
                await self._messenger.edit_text(chat_id, run.status_message_id, text, buttons=buttons)
                return
        except Exception as error:
            log.warning("transcription.status_failed", transcript_id=str(run.transcript.id), error=str(error))
            return
        run.details["status_message_id"] = run.status_message_id
        with contextlib.suppress(_ClaimLost):  # a failed run still shows its message
            await self._set(run, details={**run.details})

    async def _set(self, run: _Run, **values: Any) -> None:
        """Update the row if this run still owns it and it is not finished; else _ClaimLost."""
        async with unit_of_work(self._sessions) as session:
            updated = await session.scalar(
                update(Transcript)
                .where(
                    Transcript.id == run.transcript.id,
                    Transcript.claim == run.claim,
                    Transcript.status.in_(IN_FLIGHT),
                )
                .values(**values)
                .returning(Transcript.id)
            )
        if updated is None:
            raise _ClaimLost

    async def _transcription_language(self, user_id: int) -> str | None:
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            return user.transcription_language if user else None

    # --- recovery ------------------------------------------------------------------------------

    async def stuck(self) -> list[uuid.UUID]:
        """Rows whose job was lost: pending for a minute, or taken with no progress for long."""
        now = self._clock.now()
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Transcript.id).where(
                    or_(
                        (Transcript.status == JobStatus.PENDING)
                        & (Transcript.updated_at < now - timedelta(minutes=1)),
                        Transcript.status.in_((JobStatus.SUBMITTED, JobStatus.RUNNING))
                        & (Transcript.updated_at < now - self._settings.stale_after),
                    )
                )
            )
            return list(rows)


def _suffix(file_name: str | None) -> str:
    """The file name's extension when it is a plain one (it helps ffmpeg guess the format)."""
    suffix = Path(file_name or "").suffix.lower()
    return suffix if 2 <= len(suffix) <= 6 and suffix[1:].isalnum() else ""


def _minutes(duration: float) -> dict[str, Any]:
    minutes = billable_minutes(duration)
    return {"minutes": minutes, "count": minutes}


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks read off the event loop, so a long recording never sits in memory."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
