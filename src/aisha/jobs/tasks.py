"""Every feature's job functions and recovery sweeps, registered on the services' queue."""

from __future__ import annotations

from typing import Protocol

from aisha.jobs import avatars
from aisha.jobs.avatars import AvatarJobServices


class TaskServices(AvatarJobServices, Protocol):
    """What the jobs of every feature need of the services (`container.Services` has it all)."""


def register_tasks(services: TaskServices) -> None:
    avatars.register(services)
