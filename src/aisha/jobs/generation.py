"""Image generation's jobs and who the jobs tell (the bot's presenter): `generation.run` (vision, enhancement, submission), `generation.finish`
(a webhook's outcome) and the recovery sweep of generations stuck in flight."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aisha.bot.presenters.generation import GenerationPresenter
from aisha.generation.models import FINISH_JOB, JOB_NAME
from aisha.remote import RemoteWebhook

if TYPE_CHECKING:
    from aisha.container import Services


def register(services: Services) -> None:
    flow = services.generation_flow
    # The presenter is the bot's: attached here, where adapters meet, not in the container.
    flow.tell_through(
        GenerationPresenter(
            messenger=services.messenger, translator=services.translator, storage=services.storage
        )
    )

    async def run_job(*, generation_id: str) -> None:
        await flow.run(generation_id=uuid.UUID(generation_id))

    async def finish_job(*, generation_id: str, webhook: dict[str, Any]) -> None:
        await flow.finish(generation_id=uuid.UUID(generation_id), webhook=RemoteWebhook(**webhook))

    services.queue.register(JOB_NAME, run_job)
    services.queue.register(FINISH_JOB, finish_job)
    services.recovery.register("generation.stuck", flow.sweep)
