"""Every job and recovery check of the product, registered on the services' queue and sweep.

Each feature's `aisha.jobs.<feature>.register(services)` adds its own; the runtime calls
`register_tasks` once, right after building the services, in every process (bot, API, worker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.jobs import admin, avatars, billing, generation, transcription

if TYPE_CHECKING:
    from aisha.container import Services


def register_tasks(services: Services) -> None:
    admin.register(services)
    avatars.register(services)
    billing.register(services)
    generation.register(services)
    transcription.register(services)
    services.recovery.register("notices.owed", services.notices.sweep)
