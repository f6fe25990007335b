"""Every feature's job functions and recovery sweeps, registered on the services' queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.jobs import avatars, generation

if TYPE_CHECKING:
    from aisha.container import Services


def register_tasks(services: Services) -> None:
    avatars.register(services)
    generation.register(services)
