"""The fake FAL's checks of request bodies against the documented inputs."""

from __future__ import annotations

from typing import Any

from aisha.sandbox.fal.models import (
    _ARCHIVE_FORMATS,
    _IMAGE_SIZES,
    _TRAINER_INPUTS,
    JsonDict,
    _field_error,
    _of_type,
)
from aisha.sandbox.fal.store import FalStore


class FalValidation(FalStore):
    """Request bodies checked against the documented inputs of the trainers and FLUX endpoints."""

    @staticmethod
    def _is_trainer(endpoint: str) -> bool:
        return "train" in endpoint

    def _validate(self, endpoint: str, payload: JsonDict) -> list[JsonDict]:
        """The checks FAL's input schemas make (422 with field errors)."""
        if self._is_trainer(endpoint):
            return self._validate_training(endpoint, payload)
        problems: list[JsonDict] = []
        if not isinstance(payload.get("prompt"), str) or not payload["prompt"].strip():
            problems.append(_field_error("prompt", "field required", "value_error.missing"))
        num = payload.get("num_images", 1)
        if not _of_type(num, (int,)) or not 1 <= num <= 4:
            problems.append(_field_error("num_images", "ensure this value is between 1 and 4"))
        steps = payload.get("num_inference_steps", 28)
        if not _of_type(steps, (int,)) or not 1 <= steps <= 50:
            problems.append(_field_error("num_inference_steps", "ensure this value is between 1 and 50"))
        guidance = payload.get("guidance_scale", 3.5)
        if not _of_type(guidance, (int, float)) or not 0 <= guidance <= 35:
            problems.append(_field_error("guidance_scale", "ensure this value is between 0 and 35"))
        if "seed" in payload and not _of_type(payload["seed"], (int, type(None))):
            problems.append(_field_error("seed", "value is not a valid integer", "type_error.integer"))
        for flag in ("enable_safety_checker", "sync_mode"):
            if flag in payload and not _of_type(payload[flag], (bool,)):
                problems.append(
                    _field_error(flag, "value could not be parsed to a boolean", "type_error.bool")
                )
        if payload.get("output_format", "jpeg") not in ("jpeg", "png"):
            problems.append(
                _field_error("output_format", "value is not a valid enumeration member: jpeg, png")
            )
        loras = payload.get("loras", [])
        if not isinstance(loras, list) or not all(
            isinstance(x, dict)
            and isinstance(x.get("path"), str)
            and _of_type(x.get("scale", 1), (int, float))
            for x in loras
        ):
            problems.append(_field_error("loras", "each LoRA needs a path and a numeric scale"))
        if self._image_size(payload.get("image_size", "landscape_4_3")) is None:
            problems.append(_field_error("image_size", "unknown image size"))
        return problems

    @staticmethod
    def _validate_training(endpoint: str, payload: JsonDict) -> list[JsonDict]:
        problems: list[JsonDict] = []
        url = payload.get("images_data_url")
        if not isinstance(url, str) or not url:
            problems.append(_field_error("images_data_url", "field required", "value_error.missing"))
        schema = _TRAINER_INPUTS.get(endpoint)
        if schema is None:  # another trainer: only what every one of them needs
            return problems
        for name, value in payload.items():
            kinds = schema.get(name)
            if kinds is None:
                problems.append(_field_error(name, "extra fields not permitted", "value_error.extra"))
            elif not _of_type(value, kinds):
                problems.append(_field_error(name, f"value is not a valid {kinds[0].__name__}", "type_error"))
        archive_format = payload.get("data_archive_format")
        if archive_format is not None and archive_format not in _ARCHIVE_FORMATS:
            problems.append(_field_error("data_archive_format", "unsupported archive format: zip"))
        steps = payload.get("steps", 1)
        if _of_type(steps, (int,)) and not 1 <= steps <= 10000:
            problems.append(_field_error("steps", "ensure this value is between 1 and 10000"))
        return problems

    @staticmethod
    def _image_size(value: Any) -> tuple[int, int] | None:
        if isinstance(value, str):
            return _IMAGE_SIZES.get(value)
        if isinstance(value, dict):
            width, height = value.get("width", 512), value.get("height", 512)
            if (
                isinstance(width, int)
                and isinstance(height, int)
                and 1 <= width <= 4096
                and 1 <= height <= 4096
            ):
                return width, height
        return None
