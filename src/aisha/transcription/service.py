"""Transcription as a paid job: accept a recording, price it by its probed length, hold the
credits, transcribe, deliver, and capture only what was delivered.

The handler only records the request (a `Transcript` row, PENDING) and enqueues `run`; the job
does the slow work with no database transaction open, and writes each step in a short one. The
row is the truth: a lost or crashed job is picked up again by the recovery sweep, and every step
is idempotent (the hold, capture and release are keyed by the transcript id).
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
from aisha.billing.prices import PriceList, billable_minutes
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.i18n import Texts, Translator
from aisha.jobs.metrics import JobMetrics
from aisha.messaging import Button, FileTooLarge, Messenger
from aisha.storage import ObjectStorage
from aisha.transcription.audio import AudioError, FFmpegError
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


class TooManyTranscriptions(Exception):
    """The user already has the most transcriptions running that the operator allows."""

    def __init__(self, limit: int, *, running: int) -> None:
        self.limit = limit
        self.running = running
        super().__init__(f"{running} transcriptions in flight, at most {limit} allowed")


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
    download_limit: int | None = 20 * 1024 * 1024
    max_in_flight: int = 2  # per user


@dataclass
class _Run:
    """What one execution of the job carries between its steps."""

    transcript: Transcript
    texts: Texts
    work: Path
    status_message_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


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

    def check_size(self, media: IncomingMedia) -> None:
        """Refuse at once what the Bot API won't let us download (no row, no hold)."""
        limit = self._settings.download_limit
        if limit is not None and (media.file_size or 0) > limit:
            raise FileTooLarge(media.file_size or 0, limit)

    async def accept(self, session: AsyncSession, *, media: IncomingMedia) -> uuid.UUID:
        """Record the request; the caller enqueues `run` after its transaction commits.

        Raises FileTooLarge, TooManyTranscriptions. The caller holds the user's operation lock,
        so two requests can't both pass the count.
        """
        self.check_size(media)
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
            details={"file_id": media.file_id, "chat_id": media.chat_id, "message_id": media.message_id},
        )
        session.add(transcript)
        await session.flush()
        return transcript.id

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
        """Drive one transcript to the end. Safe to call again for the same id."""
        claimed = await self._claim(uuid.UUID(transcript_id))
        if claimed is None:
            return
        transcript, texts = claimed
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aisha-transcript-"))
        state = _Run(
            transcript, texts, work, transcript.details.get("status_message_id"), dict(transcript.details)
        )
        try:
            await self._run(state)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _claim(self, transcript_id: uuid.UUID) -> tuple[Transcript, Texts] | None:
        """Take the row unless it is finished or another run is alive on it (recent progress)."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            result = await session.execute(
                update(Transcript)
                .where(
                    Transcript.id == transcript_id,
                    or_(
                        Transcript.status == JobStatus.PENDING,
                        (Transcript.status == JobStatus.RUNNING)
                        & (Transcript.updated_at < now - self._settings.stale_after),
                    ),
                )
                .values(updated_at=now)
                .returning(Transcript.id)
            )
            if result.first() is None:
                return None
            transcript = await session.get(Transcript, transcript_id, populate_existing=True)
            assert transcript is not None
            user = await session.get(User, transcript.user_id)
            language = user.language if user else self._translator.default_locale
            return transcript, self._translator.bind(language)

    async def _run(self, run: _Run) -> None:
        t, transcript = run.texts, run.transcript
        chat_id = int(run.details["chat_id"])
        await self._status(run, t("transcription.status.downloading"))
        source = run.work / "source"
        try:
            await self._messenger.download(str(run.details["file_id"]), source)
            pipeline = self._require_pipeline()
            info = await pipeline.probe(source)
        except FileTooLarge as error:
            await self._fail(
                run, "too_large", t("transcription.error.too_large", limit_mb=error.limit // 2**20)
            )
            return
        except AudioError as error:
            await self._fail(run, error.reason.value, t(f"transcription.error.{error.reason.value}"))
            return
        except FFmpegError as error:  # ffmpeg itself broke: our fault, not the file's
            log.error("transcription.ffmpeg_failed", transcript_id=str(transcript.id), error=str(error))
            await self._fail(run, "ffmpeg_failed", t("transcription.error.internal"))
            return

        price = self._prices.transcription_price(info.duration)
        try:
            balance = await self._hold(run, price=price, duration=info.duration)
        except InsufficientCredits as error:
            await self._fail(
                run,
                "insufficient_credits",
                t(
                    "billing.insufficient",
                    required=error.required,
                    balance=error.balance,
                    shortfall=error.shortfall,
                    count=error.shortfall,
                ),
                buttons=[[Button(t("billing.topup_button"), "topup")]],
            )
            return
        header = t(
            "transcription.status.header",
            duration=format_duration(info.duration),
            price=price,
            balance=balance,
            count=price,
        )
        await self._status(run, header + "\n" + t("transcription.status.working"))

        audio_key = f"transcripts/{transcript.user_id}/{transcript.id}/audio{source.suffix or '.bin'}"
        await self._storage.put(audio_key, _read_file(source))
        await self._set(transcript.id, audio_key=audio_key)

        async def progress(done: int, total: int) -> None:
            await self._touch(transcript.id)
            if total > 1:
                await self._status(
                    run, header + "\n" + t("transcription.status.chunks", done=done, total=total)
                )

        with contextlib.suppress(Exception):
            await self._messenger.send_chat_action(chat_id, "typing")
        user_language = await self._transcription_language(transcript.user_id)
        try:
            result = await pipeline.transcribe(
                source, language=user_language, info=info, on_progress=progress
            )
        except LanguageNotSupported:  # an English-only local model, asked for Russian
            text = t("transcription.error.language_unsupported")
            await self._release_and_fail(run, "language_unsupported", text)
            return
        except (TranscriptionFailed, AudioError, FFmpegError) as error:
            log.warning("transcription.failed", transcript_id=str(transcript.id), error=str(error))
            await self._release_and_fail(run, "provider_failed", t("transcription.error.provider_failed"))
            return
        await self._succeed(run, result, price=price)

    def _require_pipeline(self) -> TranscriptionPipeline:
        if self._pipeline is None:
            raise RuntimeError("transcription is not configured: set OPENAI_API_KEY")
        return self._pipeline

    async def _hold(self, run: _Run, *, price: int, duration: float) -> int:
        transcript = run.transcript
        async with unit_of_work(self._sessions) as session:
            hold = await self._ledger.hold(
                session=session,
                user_id=transcript.user_id,
                amount=price,
                key=f"transcript:{transcript.id}:hold",
                reference=f"transcript:{transcript.id}",
                description="ledger.transcription",
                description_args={"minutes": billable_minutes(duration), "count": billable_minutes(duration)},
            )
            await session.execute(
                update(Transcript)
                .where(Transcript.id == transcript.id)
                .values(
                    status=JobStatus.RUNNING,
                    hold_id=hold.hold_id,
                    price=price,
                    duration_ms=round(duration * 1000),
                    provider_cost_micro_usd=self._prices.transcription_cost_micro_usd(duration),
                )
            )
        return hold.balance

    async def _succeed(self, run: _Run, result: Transcription, *, price: int) -> None:
        transcript = run.transcript
        base = f"transcripts/{transcript.user_id}/{transcript.id}"
        text_key = f"{base}/transcript.txt"
        await self._storage.put(text_key, result.text.encode())
        srt = result.srt
        srt_key = f"{base}/transcript.srt" if srt else None
        if srt_key and srt:
            await self._storage.put(srt_key, srt.encode())
        async with unit_of_work(self._sessions) as session:
            row = await session.get(Transcript, transcript.id, with_for_update=True)
            assert row is not None
            if row.status != JobStatus.RUNNING:
                return  # another run finished it meanwhile
            capture = await self._ledger.capture(
                session=session,
                hold_id=row.hold_id,  # type: ignore[arg-type]
                amount=price,
                key=f"transcript:{transcript.id}:capture",
                description="ledger.transcription_done",
            )
            row.status = JobStatus.SUCCEEDED
            row.text = result.text
            row.text_key, row.srt_key = text_key, srt_key
            row.language = result.language
            row.duration_ms = round(result.duration * 1000)
            row.finished_at = self._clock.now()
            row.details = {**row.details, "chunks": len(result.chunks), "attempts": result.attempts}
            # The recording is not kept once its text is (unless the operator asks for it).
            audio_key = None if self._settings.keep_audio else row.audio_key
            if audio_key:
                row.audio_key = None
        if audio_key:
            await self._storage.delete(audio_key)
        log.info(
            "transcription.succeeded",
            transcript_id=str(transcript.id),
            seconds=round(result.duration, 1),
            chunks=len(result.chunks),
            captured=capture.captured,
        )
        await self._deliver(run, result, text_key=text_key, srt_key=srt_key)

    async def _deliver(self, run: _Run, result: Transcription, *, text_key: str, srt_key: str | None) -> None:
        t = run.texts
        chat_id = int(run.details["chat_id"])
        reply_to = run.details.get("message_id")
        await self._status(run, t("transcription.status.done", duration=format_duration(result.duration)))
        # Escaped, since messages are HTML; the margin keeps an escaped part within Telegram's limit.
        parts = result.messages(MESSAGE_LIMIT) if result.text.strip() else [t("transcription.empty")]
        for part in parts:
            await self._messenger.send_text(chat_id, html.escape(part, quote=False), reply_to=reply_to)
        if len(result.text) > FILE_THRESHOLD_CHARS:
            await self._messenger.send_document(
                chat_id, file_name="transcript.txt", data=await self._storage.get(text_key)
            )
        if srt_key:
            await self._messenger.send_document(
                chat_id, file_name="transcript.srt", data=await self._storage.get(srt_key)
            )

    async def _release_and_fail(self, run: _Run, code: str, message: str) -> None:
        transcript = run.transcript
        async with unit_of_work(self._sessions) as session:
            row = await session.get(Transcript, transcript.id, with_for_update=True)
            assert row is not None
            if row.status == JobStatus.RUNNING and row.hold_id is not None:
                await self._ledger.release(
                    session=session, hold_id=row.hold_id, key=f"transcript:{transcript.id}:release"
                )
            row.status = JobStatus.FAILED
            row.error = code
            row.finished_at = self._clock.now()
            audio_key, row.audio_key = row.audio_key, None
        if audio_key:
            await self._storage.delete(audio_key)
        await self._status(run, message)
        await self._metrics.job_failed(JOB_NAME, code)

    async def _fail(
        self, run: _Run, code: str, message: str, *, buttons: list[list[Button]] | None = None
    ) -> None:
        """Fail before anything was held: nothing to give back."""
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(Transcript)
                .where(Transcript.id == run.transcript.id, Transcript.status == JobStatus.PENDING)
                .values(status=JobStatus.FAILED, error=code, finished_at=self._clock.now())
            )
        await self._status(run, message, buttons=buttons)
        await self._metrics.job_failed(JOB_NAME, code)

    async def _status(self, run: _Run, text: str, *, buttons: list[list[Button]] | None = None) -> None:
        """One status message per transcript, edited in place, never repeated."""
        chat_id = int(run.details["chat_id"])
        if run.status_message_id is None:
            run.status_message_id = await self._messenger.send_text(
                chat_id, text, buttons=buttons, reply_to=run.details.get("message_id")
            )
            run.details["status_message_id"] = run.status_message_id
            await self._set(run.transcript.id, details=run.details)
        else:
            await self._messenger.edit_text(chat_id, run.status_message_id, text, buttons=buttons)

    async def _set(self, transcript_id: uuid.UUID, **values: Any) -> None:
        async with unit_of_work(self._sessions) as session:
            await session.execute(update(Transcript).where(Transcript.id == transcript_id).values(**values))

    async def _touch(self, transcript_id: uuid.UUID) -> None:
        await self._set(transcript_id, updated_at=self._clock.now())

    async def _transcription_language(self, user_id: int) -> str | None:
        async with self._sessions() as session:
            user = await session.get(User, user_id)
            return user.transcription_language if user else None

    # --- recovery ------------------------------------------------------------------------------

    async def stuck(self) -> list[uuid.UUID]:
        """Rows whose job was lost: pending for a minute, or running with no progress for long."""
        now = self._clock.now()
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Transcript.id).where(
                    or_(
                        (Transcript.status == JobStatus.PENDING)
                        & (Transcript.updated_at < now - timedelta(minutes=1)),
                        (Transcript.status == JobStatus.RUNNING)
                        & (Transcript.updated_at < now - self._settings.stale_after),
                    )
                )
            )
            return list(rows)


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks read off the event loop, so a long recording never sits in memory."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
