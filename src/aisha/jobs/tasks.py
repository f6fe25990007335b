"""Every feature's job functions and recovery sweeps, registered on `services.queue` and
`services.recovery` (each feature's `aisha.jobs.<feature>.register`)."""

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
