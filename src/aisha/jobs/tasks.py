"""Every job's task function and recovery sweep, registered on the services' queue and sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aisha.jobs import transcription

if TYPE_CHECKING:
    from aisha.container import Services


def register_tasks(services: Services) -> None:
    transcription.register(services)
