"""FLUX on FAL's queue for image generation (the feature's ImageGenerator): fal-ai/flux-lora with
the avatar's LoRA, or plain FLUX without one. Owns every FAL detail of it: endpoints, the payload,
FAL's size names, its states, and the webhook URL a job reports to."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from aisha.generation.errors import GenerationFailed
from aisha.generation.ports import ImageJob, ProviderState
from aisha.providers.fal import FalClient, ImagesOutput, parse_images_result, port_state, webhook_url
from aisha.remote import RemoteFailed, RemoteMalformedOutput, RemoteNotFound

# The aspect ratios the feature offers, as FAL's image_size enum names them.
IMAGE_SIZES: dict[str, str] = {
    "1:1": "square_hd",
    "3:4": "portrait_4_3",
    "4:3": "landscape_4_3",
    "9:16": "portrait_16_9",
    "16:9": "landscape_16_9",
}
WEBHOOK_KIND = "generation"


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    lora_endpoint: str = "fal-ai/flux-lora"
    plain_endpoint: str = "fal-ai/flux/dev"
    steps: int = 28
    guidance_scale: float = 3.5
    lora_scale: float = 1.0
    max_download_bytes: int = 30 * 1024 * 1024


class FalImageGenerator:
    """`public_base_url`: where FAL posts its webhooks; None: polling mode (the job polls)."""

    def __init__(
        self,
        client: FalClient,
        http: httpx.AsyncClient,
        config: GeneratorConfig,
        *,
        public_base_url: str | None = None,
    ) -> None:
        self._client = client
        self._http = http
        self.config = config
        self._public_base_url = public_base_url

    @property
    def webhooks(self) -> bool:
        return bool(self._public_base_url)

    def request(
        self, *, prompt: str, lora_url: str | None, aspect_ratio: str, num_images: int, seed: int
    ) -> ImageJob:
        payload: dict[str, Any] = {
            "prompt": prompt,
            "image_size": IMAGE_SIZES[aspect_ratio],
            "num_inference_steps": self.config.steps,
            "guidance_scale": self.config.guidance_scale,
            "num_images": num_images,
            "seed": seed,
            "enable_safety_checker": True,
            "output_format": "png",
        }
        settings = dict(payload)
        del settings["prompt"]
        if lora_url is None:
            return ImageJob(self.config.plain_endpoint, payload, settings)
        payload["loras"] = [{"path": lora_url, "scale": self.config.lora_scale}]
        settings["lora_scale"] = self.config.lora_scale
        return ImageJob(self.config.lora_endpoint, payload, settings)

    async def submit(self, job: ImageJob, *, generation_id: uuid.UUID) -> str:
        webhook = None
        if self._public_base_url:
            webhook = webhook_url(self._public_base_url, kind=WEBHOOK_KIND, row_id=generation_id)
        submission = await self._client.submit(job.endpoint, job.payload, webhook_url=webhook)
        return submission.request_id

    async def state(self, *, endpoint: str, request_id: str) -> ProviderState:
        return ProviderState(port_state(await self._client.known_state(endpoint, request_id)))

    async def result(self, *, endpoint: str, request_id: str) -> ImagesOutput:
        try:
            return parse_images_result(await self._client.result(endpoint, request_id))
        except (RemoteFailed, RemoteNotFound, RemoteMalformedOutput) as exc:
            raise GenerationFailed(str(exc)) from None

    def parse(self, payload: dict[str, Any] | None) -> ImagesOutput:
        if payload is None:
            raise RemoteMalformedOutput("no payload")
        return parse_images_result(payload)

    async def cancel(self, *, endpoint: str, request_id: str) -> None:
        await self._client.cancel(endpoint, request_id)

    async def lora_answers(self, url: str) -> bool:
        return await self._client.answers(url)

    async def publish_lora(self, data: bytes) -> str:
        return await self._client.upload(
            data, file_name="lora.safetensors", content_type="application/octet-stream"
        )

    async def download(self, url: str) -> bytes:
        try:
            response = await self._http.get(url, timeout=60.0, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise GenerationFailed(str(exc)) from None
        if len(response.content) > self.config.max_download_bytes:
            raise GenerationFailed("image is larger than we accept")
        return response.content
