"""The avatar trainer on FAL (implements `aisha.avatars.ports.Trainer`).

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

import uuid
from dataclasses import dataclass
from typing import Any

from aisha.avatars.errors import TrainingFailed
from aisha.avatars.models import AvatarType, TrainingOutput
from aisha.avatars.ports import TrainingRequest, TrainingState
from aisha.providers.fal import FalClient, parse_training_result, port_state, webhook_url
from aisha.remote import RemoteFailed, RemoteNotFound

# A FLUX LoRA of rank 16 is about 90 MB; the trainers' largest ranks stay well under this.
MAX_LORA_BYTES = 1024 * 1024 * 1024
WEBHOOK_KIND = "avatar"  # api/fal.py routes FAL's webhooks of this kind to the avatars


@dataclass(frozen=True, slots=True)
class TrainerConfig:
    portrait_endpoint: str
    style_endpoint: str
    portrait_steps: int
    style_steps: int
    # Where FAL posts its webhook; None: polling mode (the recovery sweep polls instead).
    public_base_url: str | None = None


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

    def webhook_url(self, avatar_id: uuid.UUID) -> str | None:
        """Where FAL reports the end of this avatar's training; None in polling mode."""
        if not self._config.public_base_url:
            return None
        return webhook_url(self._config.public_base_url, kind=WEBHOOK_KIND, row_id=avatar_id)

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
        avatar_id: uuid.UUID,
    ) -> TrainingRequest:
        endpoint = self.endpoint(avatar_type)
        payload = self.payload(avatar_type=avatar_type, images_url=images_url, trigger_phrase=trigger_phrase)
        submission = await self._client.submit(endpoint, payload, webhook_url=self.webhook_url(avatar_id))
        # The archive URL is a bearer link to biometric data: don't keep it in the row.
        stored = {k: v for k, v in payload.items() if k != "images_data_url"}
        return TrainingRequest(
            endpoint=endpoint,
            request_id=submission.request_id,
            payload=stored,
            queue_position=submission.queue_position,
        )

    async def state(self, *, endpoint: str, request_id: str) -> TrainingState:
        return TrainingState(port_state(await self._client.known_state(endpoint, request_id)))

    def parse_output(self, payload: dict[str, Any]) -> TrainingOutput:
        return parse_training_result(payload)

    async def result(self, *, endpoint: str, request_id: str) -> TrainingOutput:
        try:
            data = await self._client.result(endpoint, request_id)
        except (RemoteFailed, RemoteNotFound) as exc:
            raise TrainingFailed(str(exc)) from None
        return self.parse_output(data)

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        await self._client.cancel(endpoint, request_id)

    async def download(self, url: str) -> bytes:
        return await self._client.download(url, max_bytes=MAX_LORA_BYTES)

    async def aclose(self) -> None:
        await self._client.aclose()
