"""The trainer behind avatars: a Protocol the service depends on, and its FAL implementation.

Schemas (fal.ai model pages, checked for this build):
- ``fal-ai/flux-lora-portrait-trainer``: ``images_data_url``, ``trigger_phrase``, ``steps``
  (default 2500), ``learning_rate``, ``data_archive_format``...; output ``diffusers_lora_file``,
  ``config_file``.
- ``fal-ai/flux-lora-fast-training``: ``images_data_url``, ``trigger_word``, ``is_style``,
  ``steps`` (default 1000), ``create_masks``, ``data_archive_format``...; the same output.

Both take ``data_archive_format`` (optional, inferred when left out): we always send ``"zip"``,
so the trainer never has to guess from a URL that, for a signed link, ends in a query string.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from aisha.avatars.models import AvatarType
from aisha.providers.fal import FalClient, TrainingOutput, parse_training_result
from aisha.remote import RemoteFailed, RemoteNotFound, RemoteState

# A FLUX LoRA of rank 16 is about 90 MB; the trainers' largest ranks stay well under this.
MAX_LORA_BYTES = 1024 * 1024 * 1024


class TrainingFailed(Exception):
    """The provider ran the training and it failed (or has no result): release the credits."""


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
        webhook_url: str | None,
    ) -> TrainingRequest:
        """Queue a training. Raises RemoteRefused (nothing queued), RemoteUnavailable."""
        ...

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState: ...

    async def upload_archive(self, data: bytes, *, expires_in: int) -> str:
        """Put the training archive in the provider's storage for ``expires_in`` seconds; its URL."""
        ...

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        """The LoRA of a completed training; TrainingFailed if it failed or the result is gone."""
        ...

    async def cancel(self, *, endpoint: str, request_id: str) -> None: ...

    async def download(self, url: str) -> bytes:
        """A file of a finished training (the LoRA, its config) from the provider's CDN.

        Raises RemoteNotFound when the file is gone, another RemoteError when it can't be had now.
        """
        ...


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    portrait_endpoint: str
    style_endpoint: str
    portrait_steps: int
    style_steps: int


class FalTrainer:
    def __init__(self, client: FalClient, config: TrainerConfig) -> None:
        self._client = client
        self._config = config

    def payload(self, *, avatar_type: AvatarType, images_url: str, trigger_phrase: str) -> dict[str, Any]:
        if avatar_type is AvatarType.PORTRAIT:
            return {
                "images_data_url": images_url,
                "trigger_phrase": trigger_phrase,
                "steps": self._config.portrait_steps,
                "data_archive_format": "zip",
            }
        return {
            "images_data_url": images_url,
            "trigger_word": trigger_phrase,
            "is_style": True,
            "steps": self._config.style_steps,
            "data_archive_format": "zip",
        }

    async def upload_archive(self, data: bytes, *, expires_in: int) -> str:
        return await self._client.upload(
            data, file_name="training.zip", content_type="application/zip", expires_in=expires_in
        )

    def endpoint(self, avatar_type: AvatarType) -> str:
        if avatar_type is AvatarType.PORTRAIT:
            return self._config.portrait_endpoint
        return self._config.style_endpoint

    async def submit(
        self,
        *,
        avatar_type: AvatarType,
        images_url: str,
        trigger_phrase: str,
        webhook_url: str | None,
    ) -> TrainingRequest:
        endpoint = self.endpoint(avatar_type)
        payload = self.payload(avatar_type=avatar_type, images_url=images_url, trigger_phrase=trigger_phrase)
        submission = await self._client.submit(endpoint, payload, webhook_url=webhook_url)
        # The archive URL is a bearer link to biometric data: don't keep it in the row.
        stored = {k: v for k, v in payload.items() if k != "images_data_url"}
        return TrainingRequest(
            endpoint=endpoint,
            request_id=submission.request_id,
            payload=stored,
            queue_position=submission.queue_position,
        )

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState:
        try:
            status = await self._client.status(endpoint, request_id)
        except RemoteNotFound:
            return TrainingState.UNKNOWN
        if status.state is RemoteState.COMPLETED:
            return TrainingState.DONE
        if status.state is RemoteState.IN_PROGRESS:
            return TrainingState.RUNNING
        return TrainingState.QUEUED

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        try:
            data = await self._client.result(endpoint, request_id)
        except RemoteFailed as exc:
            raise TrainingFailed(str(exc)) from None
        except RemoteNotFound as exc:
            raise TrainingFailed(str(exc)) from None
        return parse_training_result(data)

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        await self._client.cancel(endpoint, request_id)

    async def download(self, url: str) -> bytes:
        return await self._client.download(url, max_bytes=MAX_LORA_BYTES)

    async def aclose(self) -> None:
        await self._client.aclose()
