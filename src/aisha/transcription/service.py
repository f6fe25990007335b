"""Transcription as a paid job, the decisions taken inside an update: accept a recording, list,
show and delete the user's transcripts, and find a recording refused for credits to resume it.

Starting is a paid operation (`aisha.operations.PaidOperations`): under the user's lock, a
`Transcript` row is written (PENDING, no credits held yet: the job holds them once it knows the
recording's length) and the job is queued after that commit. What happens next is
`aisha.transcription.flow`.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.db.base import JobStatus
from aisha.db.session import after_commit
from aisha.operations import PaidOperations
from aisha.storage import ObjectStorage
from aisha.transcription.errors import TooManyTranscriptions, TranscriptionUnavailable
from aisha.transcription.models import (
    IN_FLIGHT,
    REFUSED_FOR_CREDITS,
    IncomingMedia,
    RefusedRecording,
    Transcript,
    TranscriptionSettings,
)
from aisha.transcription.ports import Enqueue, FileSource


class TranscriptionService:
    def __init__(
        self,
        *,
        operations: PaidOperations,
        files: FileSource,
        storage: ObjectStorage,
        settings: TranscriptionSettings,
        enqueue: Enqueue,
        available: bool,
    ) -> None:
        self._operations = operations
        self._files = files
        self._storage = storage
        self._settings = settings
        self._enqueue = enqueue
        self._available = available

    @property
    def available(self) -> bool:
        """False when no speech backend is configured."""
        return self._available

    async def start(self, session: AsyncSession, *, media: IncomingMedia) -> uuid.UUID:
        """Record the request and queue its job once `session`'s unit of work commits.

        Raises TranscriptionUnavailable, Busy, FileTooLarge, NotEnoughRoom (what can't be
        downloaded is refused at once: no row, no hold), TooManyTranscriptions. The user's lock is
        held until the unit of work ends, so two requests can't both pass the count.
        """
        if not self._available:
            raise TranscriptionUnavailable
        return await self._operations.start(
            session,
            user_id=media.user_id,
            begin=lambda: self._accept(session, media),
            enqueue=self._enqueue,
        )

    async def _accept(self, session: AsyncSession, media: IncomingMedia) -> uuid.UUID:
        await self._files.check_download(media.file_size)
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

    async def last_refused_for_credits(
        self, session: AsyncSession, *, user_id: int, since: datetime
    ) -> tuple[uuid.UUID, datetime] | None:
        """The user's latest recording and when it was refused, if its job refused it for credits
        since `since`: what a top-up, however it was started, offers to continue. None once a
        newer recording was sent (or this one continued)."""
        last = (
            await session.execute(
                select(Transcript.id, Transcript.status, Transcript.error, Transcript.finished_at)
                .where(Transcript.user_id == user_id)
                .order_by(Transcript.created_at.desc())
                .limit(1)
            )
        ).first()
        if (
            last is None
            or last.status != JobStatus.FAILED
            or last.error != REFUSED_FOR_CREDITS
            or last.finished_at is None
            or last.finished_at < since
        ):
            return None
        return last.id, last.finished_at

    async def list_for(
        self, session: AsyncSession, *, user_id: int, limit: int, offset: int
    ) -> tuple[list[Transcript], int]:
        mine = (Transcript.user_id == user_id, Transcript.status == JobStatus.SUCCEEDED)
        total = await session.scalar(select(func.count()).select_from(Transcript).where(*mine))
        rows = await session.scalars(
            select(Transcript).where(*mine).order_by(Transcript.created_at.desc()).limit(limit).offset(offset)
        )
        return list(rows), int(total or 0)

    async def page(
        self, session: AsyncSession, *, user_id: int, limit: int, offset: int
    ) -> tuple[list[Transcript], int, int]:
        """A page of the user's transcripts, its total and its offset: when the page is empty
        but others exist (its last one was just deleted), the last page there is."""
        items, total = await self.list_for(session, user_id=user_id, limit=limit, offset=offset)
        if not items and total:
            offset = (total - 1) // limit * limit
            items, total = await self.list_for(session, user_id=user_id, limit=limit, offset=offset)
        return items, total, offset

    async def get_owned(
        self, session: AsyncSession, *, user_id: int, transcript_id: uuid.UUID | None
    ) -> Transcript | None:
        """The transcript if it is this user's and finished; None for anyone else's (or none)."""
        transcript = await session.get(Transcript, transcript_id) if transcript_id is not None else None
        if transcript is None or transcript.user_id != user_id or transcript.status != JobStatus.SUCCEEDED:
            return None
        return transcript

    async def delete(self, session: AsyncSession, *, user_id: int, transcript_id: uuid.UUID) -> bool:
        """Delete the user's finished transcript; its stored files once that has committed."""
        transcript = await self.get_owned(session, user_id=user_id, transcript_id=transcript_id)
        if transcript is None:
            return False
        keys = [key for key in (transcript.audio_key, transcript.text_key, transcript.srt_key) if key]
        await session.delete(transcript)

        async def delete_files() -> None:
            for key in keys:
                await self._storage.delete(key)

        # Its files go once the row is gone for good: no storage call while the transaction is open.
        after_commit(session, delete_files)
        return True

    async def read_file(self, key: str) -> bytes:
        return await self._storage.get(key)
