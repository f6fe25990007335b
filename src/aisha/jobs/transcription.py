"""The transcription job on the queue, and the recovery sweep that queues a lost one again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aisha.bot.presenters.transcription import TranscriptionPresenter
from aisha.i18n import Translator
from aisha.jobs.queue import JobQueue
from aisha.jobs.recovery import RecoverySweep
from aisha.messaging import Messenger
from aisha.transcription.flow import JOB_NAME, TranscriptionFlow
from aisha.transcription.ports import TranscriptionEvents


class _Wired(Protocol):
    """What of `aisha.container.Services` the job needs."""

    @property
    def queue(self) -> JobQueue: ...
    @property
    def recovery(self) -> RecoverySweep: ...
    @property
    def messenger(self) -> Messenger: ...
    @property
    def translator(self) -> Translator: ...
    @property
    def transcription_flow_for(self) -> Callable[[TranscriptionEvents], TranscriptionFlow]: ...

    transcription_flow: TranscriptionFlow


def register(services: _Wired) -> None:
    """The job's flow, told what the user sees through the bot's presenter; `transcription.run` in
    every process that runs jobs, and the sweep that re-drives rows whose job was lost (a crash, a
    restart, a job dropped between commit and enqueue)."""
    presenter = TranscriptionPresenter(messenger=services.messenger, translator=services.translator)
    flow = services.transcription_flow = services.transcription_flow_for(presenter)
    services.queue.register(JOB_NAME, flow.run)

    async def redrive() -> int:
        stuck = await flow.stuck()
        for transcript_id in stuck:
            await services.queue.enqueue(JOB_NAME, transcript_id=str(transcript_id))
        return len(stuck)

    services.recovery.register("transcription.stuck", redrive)
