"""What image generation needs from outside, as Protocols: the image model's queue, the LLM that
rewrites prompts, the vision model, and the one who tells the user (the bot's presenter).

Providers (`aisha.providers.fal_images`, `aisha.providers.openai_chat`) implement them; the
feature never learns a provider's URLs, payload shapes or state names.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aisha.generation.models import EnhancedPrompt, Finished, PromptSubject, QualityVerdict
from aisha.operations import JobFigures

__all__ = [
    "EnhancedPrompt",
    "GeneratedImage",
    "GeneratedImages",
    "GenerationEvents",
    "ImageGenerator",
    "ImageJob",
    "JobFigures",
    "PromptSubject",
    "PromptWriter",
    "ProviderState",
    "QualityVerdict",
    "Vision",
]


class ProviderState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ImageJob:
    """One job as the provider will be asked: `settings` is what the row keeps of it (no prompt)."""

    endpoint: str
    payload: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


class GeneratedImage(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def nsfw(self) -> bool: ...


class GeneratedImages(Protocol):
    @property
    def images(self) -> Sequence[GeneratedImage]: ...
    @property
    def seed(self) -> int | None: ...


class ImageGenerator(Protocol):
    @property
    def webhooks(self) -> bool:
        """True when the provider posts a webhook when a job ends (else the job polls)."""
        ...

    def request(
        self, *, prompt: str, lora_url: str | None, aspect_ratio: str, num_images: int, seed: int
    ) -> ImageJob:
        """The endpoint and the input for one job (no I/O)."""
        ...

    async def submit(self, job: ImageJob, *, generation_id: uuid.UUID) -> str:
        """Queue a job (its webhook, if any, names `generation_id`); its request id.

        Raises RemoteRefused, RemoteUnavailable (maybe_submitted when the outcome is unknown).
        """
        ...

    async def state(self, *, endpoint: str, request_id: str) -> ProviderState: ...

    async def result(self, *, endpoint: str, request_id: str) -> GeneratedImages:
        """The images of a completed job; GenerationFailed if it failed or is gone.

        Raises RemoteUnavailable (or another RemoteError) when the provider could not say.
        """
        ...

    def parse(self, payload: dict[str, Any] | None) -> GeneratedImages:
        """The images a webhook carried; RemoteMalformedOutput when they are not there."""
        ...

    async def cancel(self, *, endpoint: str, request_id: str) -> None: ...

    async def download(self, url: str) -> bytes:
        """One image's bytes; GenerationFailed when it can't be had."""
        ...

    async def lora_answers(self, url: str) -> bool:
        """False when the provider's CDN says the LoRA file is gone (media expiry)."""
        ...

    async def publish_lora(self, data: bytes) -> str:
        """Put LoRA weights where the provider can fetch them; their new URL. Raises RemoteError."""
        ...


class PromptWriter(Protocol):
    """The LLM layer: English, enriched, without the trigger phrase (the deterministic layer adds it)."""

    async def rewrite(self, prompt: str, *, portrait: bool) -> str: ...


class Vision(Protocol):
    async def describe(self, image: bytes) -> str:
        """An image prompt for the scene, light, clothing and pose; never who the person is."""
        ...

    async def check_quality(self, image: bytes) -> QualityVerdict: ...


class GenerationEvents(Protocol):
    """What the job tells the user. A failed message never undoes the outcome."""

    async def action(self, user_id: int) -> None: ...

    async def working(self, *, user_id: int, locale: str, config: dict[str, Any], step: str) -> None: ...

    async def delivered(
        self,
        *,
        generation_id: uuid.UUID,
        finished: Finished,
        results: list[dict[str, Any]],
        blocked: int,
        failed: int,
    ) -> int | None:
        """The images and their "What next?" buttons; the id of the message carrying those
        buttons (None if there is none)."""
        ...

    async def remove_buttons(self, user_id: int, message_id: int) -> None:
        """An older result's "What next?" buttons go (a newer result carries them)."""
        ...

    async def failed(self, *, finished: Finished, reason: str) -> None: ...

    async def defect(self, *, user_id: int, locale: str, generation_id: uuid.UUID, free: bool) -> None: ...
