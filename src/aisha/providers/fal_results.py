"""The outputs of FAL's models as typed values: the LoRA trainers' and the FLUX image endpoints'."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aisha.avatars.models import TrainingOutput
from aisha.remote import RemoteMalformedOutput


@dataclass(frozen=True, slots=True)
class ImageOut:
    url: str
    width: int | None
    height: int | None
    content_type: str | None
    nsfw: bool


@dataclass(frozen=True, slots=True)
class ImagesOutput:
    images: tuple[ImageOut, ...]
    seed: int | None
    prompt: str | None = None


def parse_training_result(data: Mapping[str, Any]) -> TrainingOutput:
    """Output of fal-ai/flux-lora-portrait-trainer and fal-ai/flux-lora-fast-training."""
    lora = data.get("diffusers_lora_file")
    lora_url = lora.get("url") if isinstance(lora, Mapping) else None
    if not isinstance(lora_url, str) or not lora_url:
        raise RemoteMalformedOutput("training output has no diffusers_lora_file.url")
    config = data.get("config_file")
    config_url = config.get("url") if isinstance(config, Mapping) else None
    return TrainingOutput(lora_url=lora_url, config_url=config_url if isinstance(config_url, str) else None)


def parse_images_result(data: Mapping[str, Any]) -> ImagesOutput:
    """Output of fal-ai/flux-lora and fal-ai/flux/*: images, their NSFW flags and the seed."""
    raw_images = data.get("images")
    if not isinstance(raw_images, list) or not raw_images:
        raise RemoteMalformedOutput("image output has no images")
    flags = data.get("has_nsfw_concepts")
    nsfw = flags if isinstance(flags, list) else []
    images: list[ImageOut] = []
    for index, item in enumerate(raw_images):
        url = item.get("url") if isinstance(item, Mapping) else None
        if not isinstance(url, str) or not url:
            raise RemoteMalformedOutput(f"image {index} has no url")
        assert isinstance(item, Mapping)
        content_type = item.get("content_type")
        images.append(
            ImageOut(
                url=url,
                width=_int_or_none(item.get("width")),
                height=_int_or_none(item.get("height")),
                content_type=content_type if isinstance(content_type, str) else None,
                # Only FAL's explicit True marks an image; with no flag (checker off) the
                # service's own check decides.
                nsfw=index < len(nsfw) and nsfw[index] is True,
            )
        )
    prompt = data.get("prompt")
    return ImagesOutput(
        images=tuple(images),
        seed=_int_or_none(data.get("seed")),
        prompt=prompt if isinstance(prompt, str) else None,
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
