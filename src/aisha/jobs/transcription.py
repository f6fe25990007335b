"""The transcription job on the queue, and the recovery sweep that queues a lost one again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.bot.presenters.transcription import TranscriptionPresenter
from aisha.transcription.flow import JOB_NAME

if TYPE_CHECKING:
    from aisha.container import Services


def register(services: Services) -> None:
    """The job's flow, told what the user sees through the bot's presenter; `transcription.run` in
    every process that runs jobs, and the sweep that re-drives rows whose job was lost (a crash, a
    restart, a job dropped between commit and enqueue)."""
    flow = services.transcription_flow
    # The presenter is the bot's: attached here, where adapters meet, not in the container.
    flow.tell_through(TranscriptionPresenter(messenger=services.messenger, translator=services.translator))
    services.queue.register(JOB_NAME, flow.run)

    async def redrive() -> int:
        stuck = await flow.stuck()
        for transcript_id in stuck:
            await services.queue.enqueue(JOB_NAME, transcript_id=str(transcript_id))
        return len(stuck)

    services.recovery.register("transcription.stuck", redrive)
