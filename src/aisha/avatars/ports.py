"""What the avatar feature needs from outside: a trainer (FAL today, `providers/fal_training.py`),
the events it announces to users (the bot's presenter, `bot/presenters/avatars.py`), the job
queue (as plain callables) and the operator's figures. Nothing here names a provider or a library.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aisha.avatars.models import AvatarType, TrainingOutput, UploadStatus
from aisha.messaging import Buttons
from aisha.operations import JobFigures

# The feature's jobs (registered by `jobs/avatars.py`).
PHOTO_JOB = "avatars.photo"
TRAIN_JOB = "avatars.train"
KEEP_JOB = "avatars.keep_lora"


class TrainingState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # succeeded or failed: ask for the result
    UNKNOWN = "unknown"  # the provider doesn't know the request (expired, or never queued)


@dataclass(frozen=True, slots=True)
class TrainingRequest:
    endpoint: str
    request_id: str
    payload: dict[str, Any]  # what was sent, kept as the avatar's training_config
    queue_position: int | None = None


class Trainer(Protocol):
    async def submit(
        self,
        *,
        avatar_type: AvatarType,
        images_url: str,
        trigger_phrase: str,
        avatar_id: uuid.UUID,
    ) -> TrainingRequest:
        """Queue a training; its end is announced for `avatar_id` (a webhook, where the
        deployment can take one). Raises RemoteRefused (nothing queued), RemoteUnavailable."""
        ...

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState: ...

    async def upload_archive(self, data: bytes, *, expires_in: int) -> str:
        """Put the training archive in the provider's storage for ``expires_in`` seconds; its URL."""
        ...

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        """The LoRA of a completed training; TrainingFailed if it failed or the result is gone."""
        ...

    def parse_output(self, payload: dict[str, Any]) -> TrainingOutput:
        """A completed training's output as the provider sent it (a webhook's payload).
        Raises RemoteMalformedOutput when it lacks the LoRA."""
        ...

    def endpoint(self, avatar_type: AvatarType) -> str:
        """Where a training of this type runs (where its result is asked for)."""
        ...

    async def cancel(self, *, endpoint: str, request_id: str) -> None: ...

    async def download(self, url: str) -> bytes:
        """A file of a finished training (the LoRA, its config) from the provider's CDN.

        Raises RemoteNotFound when the file is gone, another RemoteError when it can't be had now.
        """
        ...


class AvatarEvents(Protocol):
    """What the feature tells users; the bot's presenter words it. A failed delivery is logged
    and swallowed there: the database already holds the truth."""

    def upload_status(
        self, *, locale: str, status: UploadStatus, min_photos: int, max_photos: int
    ) -> tuple[str, Buttons | None]:
        """The wizard's status message as it would read (compared to skip edits that change nothing)."""
        ...

    async def send(self, user_id: int, text: str, *, buttons: Buttons | None) -> int | None: ...

    async def edit(self, user_id: int, message_id: int, text: str, *, buttons: Buttons | None) -> bool: ...

    async def remove_buttons(self, user_id: int, message_id: int) -> None: ...

    async def draft_expired(self, *, user_id: int, locale: str, name: str, message_id: int) -> None:
        """The status message of a draft the sweep discarded says so, and keeps no button."""
        ...

    async def ready(self, *, user_id: int, locale: str, name: str, avatar_id: uuid.UUID) -> None: ...

    async def failed(self, *, user_id: int, locale: str, name: str, reason: str) -> None: ...


class NoFigures:
    """Figures nobody reads (tests, tools)."""

    async def job_failed(self, job: str, kind: str) -> None:
        return None

    async def generation_delivered(self, seconds: float) -> None:
        return None


__all__ = [
    "KEEP_JOB",
    "PHOTO_JOB",
    "TRAIN_JOB",
    "AvatarEvents",
    "JobFigures",
    "NoFigures",
    "Trainer",
    "TrainingRequest",
    "TrainingState",
]
