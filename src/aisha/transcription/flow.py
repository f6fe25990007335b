"""The transcription job: hold credits for what the header claims, price the recording by what it
really holds, transcribe, deliver, and capture only what was delivered.

The job does the slow work with no database transaction open and writes each step in a short one;
no call to Telegram, the speech API or storage happens inside one. The row is the truth:

- A run takes the row by bumping its `claim` (PENDING, or SUBMITTED/RUNNING with no progress for
  `stale_after`), and every later write is conditional on that claim and a non-terminal status:
  a second run for the same row stops before any speech call, and a late failure can't touch a
  delivered result.
- The header's duration sets the first hold (with a margin); the decoded length, known before any
  speech call, sets the price: more than held takes a larger hold (or refuses and gives the hold
  back); past the maximum refuses. Capture happens on the decoded length once the text arrived.
- The text is committed (delivery owed) before it is sent; a run that finds it re-sends it.
- A lost or crashed run is picked up again by the recovery sweep (`stuck`): a hold left by a run
  that died before its result is given back and the next run starts over.

What the user sees is told through `TranscriptionEvents`; the money moves in `TranscriptLedger`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing.errors import InsufficientCredits
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.messaging import FileTooLarge, NotEnoughRoom, Tells
from aisha.storage import ObjectStorage
from aisha.transcription.audio import AudioError, AudioInfo, AudioTooLong, FFmpegError, PreparedAudio
from aisha.transcription.ledger import ClaimLost, TranscriptLedger
from aisha.transcription.models import Transcript, TranscriptionSettings
from aisha.transcription.pipeline import (
    LanguageNotSupported,
    Transcription,
    TranscriptionFailed,
    TranscriptionPipeline,
)
from aisha.transcription.ports import (
    CantHold,
    CantPayLength,
    Conversation,
    Done,
    Downloading,
    Failed,
    Failure,
    FileSource,
    JobFigures,
    Status,
    TooLarge,
    TooLong,
    TranscriptionEvents,
    Working,
)
from aisha.users.models import User

log = structlog.get_logger(__name__)

T = TypeVar("T")

JOB_NAME = "transcription.run"
READ_CHUNK = 256 * 1024
# A text longer than this also arrives as a .txt file, easier to keep and share.
FILE_THRESHOLD_CHARS = 3000
# A row taken this many times without a result is failed (its hold given back) instead.
MAX_RUNS = 3


@dataclass
class _Run:
    """What one execution of the job carries between its steps."""

    transcript: Transcript
    to: Conversation
    work: Path
    claim: int  # the row's claim number this run took: its writes are conditional on it
    details: dict[str, Any] = field(default_factory=dict)
    held: int = 0  # credits on the active hold
    price: int = 0  # of the decoded length


class TranscriptionFlow(Tells[TranscriptionEvents]):
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        ledger: TranscriptLedger,
        storage: ObjectStorage,
        files: FileSource,
        events: TranscriptionEvents | None = None,
        pipeline: TranscriptionPipeline | None,
        settings: TranscriptionSettings,
        metrics: JobFigures,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._ledger = ledger
        self._storage = storage
        self._files = files
        self._told = events
        self._pipeline = pipeline
        self._settings = settings
        self._metrics = metrics

    async def run(self, *, transcript_id: str) -> None:
        """Drive one transcript to the end. Safe to call again, and concurrently, for the same id."""
        claimed = await self._claim(uuid.UUID(transcript_id))
        if claimed is None:
            return
        transcript, locale, claim = claimed
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aisha-transcript-"))
        details = dict(transcript.details)
        to = Conversation(
            chat_id=int(details["chat_id"]),
            reply_to=details.get("message_id"),
            locale=locale,
            status_message_id=details.get("status_message_id"),
        )
        state = _Run(transcript, to, work, claim, details)
        try:
            if claim > MAX_RUNS and transcript.text_key is None:
                # Runs before this one all died (a crash, Telegram or storage down): stop trying.
                log.error("transcription.gave_up", transcript_id=transcript_id, runs=claim - 1)
                await self._fail(state, Failed("gave_up"))
            elif transcript.text_key is not None:
                await self._deliver_and_settle(state)  # the result was kept; only its delivery is owed
            else:
                await self._run(state)
        except ClaimLost:
            log.info("transcription.claim_lost", transcript_id=transcript_id, claim=claim)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _claim(self, transcript_id: uuid.UUID) -> tuple[Transcript, str | None, int] | None:
        """Take the row unless it is finished or another run is alive on it (recent progress).

        The claim number goes up with each run that takes the row, and every later write of this
        run is conditional on it (see `TranscriptLedger.owned`), so a run that lost the row can't
        change it.
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
                    await self._ledger.give_back(session, transcript)
                transcript.status = JobStatus.SUBMITTED
            user = await session.get(User, transcript.user_id)
            return transcript, user.language if user else None, claim

    async def _run(self, run: _Run) -> None:
        """Download, probe, hold, store, decode, price, transcribe, keep, deliver: each step that
        fails ends the transcript (`_fail`) and returns None."""
        transcript = run.transcript
        source = await self._download(run)
        if source is None:
            return
        pipeline = self._require_pipeline()
        info = await self._audio_step(run, pipeline.probe(source))
        if info is None:
            return
        # The header's length is only a claim (a file can say 2 s and hold an hour): it sets the
        # first hold, with a margin so that a header a little short (rounding, a VBR estimate)
        # rarely needs a second one; the decoded length below sets the price.
        try:
            run.held = await self._ledger.hold(transcript.id, run.claim, duration=info.duration)
        except InsufficientCredits as error:
            required, balance, shortfall = error.required, error.balance, error.shortfall
            await self._fail(run, CantHold(transcript.id, required, balance, shortfall))
            return
        audio_key = f"transcripts/{transcript.user_id}/{transcript.id}/audio{source.suffix or '.bin'}"
        await self._storage.put(audio_key, _read_file(source))
        await self._ledger.set(transcript.id, run.claim, audio_key=audio_key)
        prepared = await self._prepare(run, pipeline, source, info)
        if prepared is None:
            return
        try:
            run.price, balance = await self._ledger.settle_price(
                transcript.id, run.claim, duration=prepared.duration, held=run.held
            )
        except InsufficientCredits as error:
            failure = CantPayLength(transcript.id, prepared.duration, error.required, error.balance)
            await self._fail(run, failure)
            return
        run.held = max(run.held, run.price)
        result = await self._transcribe(
            run, pipeline, prepared, Working(prepared.duration, run.price, balance)
        )
        if result is None:
            return
        await self._keep_result(run, result)
        await self._deliver_and_settle(run)

    async def _download(self, run: _Run) -> Path | None:
        """The recording, fetched into the run's work dir; None once the transcript has failed."""
        transcript = run.transcript
        await self._status(run, Downloading())
        source = run.work / f"source{_suffix(transcript.file_name)}"
        try:
            # The disk may have filled since the file was accepted: checked again before Telegram
            # is asked (a local Bot API server fetches the file on getFile).
            await self._files.check_download(run.details.get("file_size"))
            await self._files.download(str(run.details["file_id"]), source)
        except FileTooLarge as error:
            await self._fail(run, TooLarge(error.limit, error.public_api))
            return None
        except NotEnoughRoom:
            await self._fail(run, Failed("no_room"))
            return None
        except Exception as error:  # Telegram refused or dropped the download; nothing is held yet
            log.warning("transcription.download_failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, Failed("download_failed"))
            return None
        return source

    async def _prepare(
        self, run: _Run, pipeline: TranscriptionPipeline, source: Path, info: AudioInfo
    ) -> PreparedAudio | None:
        """The recording decoded and cut; its length is the one charged. None once failed."""
        audio_dir = run.work / "audio"
        await asyncio.to_thread(audio_dir.mkdir)
        return await self._audio_step(run, pipeline.prepare(source, audio_dir, info=info), decoded=True)

    async def _audio_step(self, run: _Run, step: Awaitable[T], *, decoded: bool = False) -> T | None:
        """Await an ffmpeg step; a file that can't be transcribed, or ffmpeg failing, fails the run.
        `decoded`: a length over the limit was measured, and the message tells it."""
        try:
            return await step
        except AudioError as error:
            failure: Failure = Failed(error.reason.value)
            if decoded and isinstance(error, AudioTooLong):
                failure = TooLong(error.duration, error.limit, error.exact)
            await self._fail(run, failure)
        except FFmpegError as error:  # ffmpeg itself broke: our fault, not the file's
            log.error("transcription.ffmpeg_failed", transcript_id=str(run.transcript.id), error=str(error))
            await self._fail(run, Failed("ffmpeg_failed"))
        return None

    async def _transcribe(
        self, run: _Run, pipeline: TranscriptionPipeline, prepared: PreparedAudio, working: Working
    ) -> Transcription | None:
        """The speech calls, with progress shown; None once the transcript has failed."""
        transcript = run.transcript
        await self._status(run, working)

        async def progress(done: int, total: int) -> None:
            await self._ledger.set(transcript.id, run.claim, updated_at=self._clock.now())
            if total > 1:
                await self._status(run, replace(working, done=done, total=total))

        with contextlib.suppress(Exception):
            await self._events.typing(run.to)
        user_language = await self._transcription_language(transcript.user_id)
        try:
            return await pipeline.transcribe_prepared(prepared, language=user_language, on_progress=progress)
        except LanguageNotSupported:  # an English-only local model, asked for Russian
            await self._fail(run, Failed("language_unsupported"))
        except (TranscriptionFailed, AudioError, FFmpegError) as error:
            log.warning("transcription.failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, Failed("provider_failed"))
        return None

    def _require_pipeline(self) -> TranscriptionPipeline:
        if self._pipeline is None:
            raise RuntimeError("transcription is not configured: set OPENAI_API_KEY")
        return self._pipeline

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
            run.transcript = await self._ledger.keep_result(
                transcript.id, run.claim, result, text_key=text_key, srt_key=srt_key
            )
        except ClaimLost:
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
        row = run.transcript
        text = row.text or ""
        await self._status(run, Done(row.duration_ms / 1000))
        try:
            await self._events.deliver(run.to, text)
        except Exception as error:
            log.warning("transcription.undelivered", transcript_id=str(row.id), error=str(error))
            await self._fail(run, Failed("undelivered"))
            return
        settled = await self._ledger.capture(row.id, run.claim, keep_audio=self._settings.keep_audio)
        if settled.audio_key:
            await self._storage.delete(settled.audio_key)
        log.info(
            "transcription.succeeded",
            transcript_id=str(row.id),
            seconds=round(settled.row.duration_ms / 1000, 1),
            captured=settled.captured,
        )
        for name, key, wanted in (
            ("transcript.txt", settled.row.text_key, len(text) > FILE_THRESHOLD_CHARS),
            ("transcript.srt", settled.row.srt_key, True),
        ):
            if key and wanted:
                try:
                    await self._events.send_file(run.to, name=name, data=await self._storage.get(key))
                except Exception as error:  # the text itself arrived; /transcripts has the file
                    log.warning("transcription.file_undelivered", transcript_id=str(row.id), error=str(error))

    async def _fail(self, run: _Run, failure: Failure) -> None:
        """End the transcript as failed: give any hold back, drop what was kept, tell the user once.

        Does nothing (raises ClaimLost) when another run owns the row or it already ended, so a
        late failure never overwrites a delivered result.
        """
        required = failure.required if isinstance(failure, (CantHold, CantPayLength)) else None
        files = await self._ledger.fail(run.transcript.id, run.claim, failure.reason, required=required)
        for key in files:
            await self._storage.delete(key)
        await self._status(run, failure)
        await self._metrics.job_failed(JOB_NAME, failure.reason)

    async def _status(self, run: _Run, status: Status) -> None:
        """One status message per transcript, edited in place, never repeated.

        Best effort: a status Telegram refuses doesn't stop the job; the delivery decides.
        """
        try:
            sent = await self._events.show(run.to, status)
        except Exception as error:
            log.warning("transcription.status_failed", transcript_id=str(run.transcript.id), error=str(error))
            return
        if sent is None:
            return
        run.to = replace(run.to, status_message_id=sent)
        run.details["status_message_id"] = sent
        with contextlib.suppress(ClaimLost):  # a failed run still shows its message
            await self._ledger.set(run.transcript.id, run.claim, details={**run.details})

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


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks read off the event loop, so a long recording never sits in memory."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
