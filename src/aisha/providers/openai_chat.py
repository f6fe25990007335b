"""OpenAI-compatible chat models for image generation: the LLM that rewrites a prompt in English
(`OpenAIPromptWriter`, the feature's PromptWriter) and the vision model that turns a reference photo
into a prompt and checks generated portraits (`OpenAIVision`, its Vision). Both ask for structured
output (json_schema); the feature keeps the fallbacks and timeouts around them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import TYPE_CHECKING, Any, Literal

from aisha.generation.models import QualityVerdict

if TYPE_CHECKING:
    from openai import AsyncOpenAI

# --- the prompt writer -----------------------------------------------------------------------

_WRITER_SYSTEM = (
    "You write prompts for the FLUX image model. Rewrite the user's request as one English image "
    "prompt: translate it if it is not in English, keep every concrete thing the user asked for "
    "(subject, clothing, place, style, framing, light, mood) and never replace an explicit choice, "
    "then enrich it with concrete visual detail (setting, materials, colours, atmosphere). "
    "When the user refers to themselves, write 'me'. Do not add names, trigger words, text to "
    "render, or anything sexual or violent that was not asked for. At most {words} words. "
    "Answer with the JSON object only."
)
_WRITER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "description": "the English image prompt"},
        "source_language": {"type": "string", "description": "ISO 639-1 code of the user's language"},
    },
    "required": ["prompt", "source_language"],
    "additionalProperties": False,
}


class OpenAIPromptWriter:
    """The LLM layer over the official `openai` client (chat completions, json_schema output)."""

    def __init__(self, client: AsyncOpenAI, *, model: str, max_words: int = 120) -> None:
        self._client = client
        self._model = model
        self._max_words = max_words

    async def rewrite(self, prompt: str, *, portrait: bool) -> str:
        hint = " The image is a portrait of the user." if portrait else ""
        response = await self._client.chat.completions.create(
            model=self._model,
            messages=[
                {"role": "system", "content": _WRITER_SYSTEM.format(words=self._max_words) + hint},
                {"role": "user", "content": prompt},
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "image_prompt", "strict": True, "schema": _WRITER_SCHEMA},
            },
            temperature=0.4,
        )
        return _json_field(response.choices[0].message.content if response.choices else None, "prompt")


def _json_field(content: str | None, name: str) -> str:
    if not content:
        raise ValueError("the model returned no content")
    data = json.loads(content)
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the model's answer has no {name!r}")
    return value.strip()


# --- vision ----------------------------------------------------------------------------------

# The model sees at most this many pixels on the long side: enough for scene and defects.
MAX_SIDE = 1024
DEFECTS = ("distorted_eyes", "extra_fingers", "broken_face", "other")
Detail = Literal["low", "high"]


_DESCRIBE_SYSTEM = (
    "You turn a reference photo into an English prompt for the FLUX image model, so that the user "
    "can be generated in the same kind of picture. Describe the scene and setting, the light, the "
    "camera angle and framing, the clothing, the pose and the mood. Refer to the person only as "
    "'me': never describe who they are, their face, ethnicity, age or body. At most 90 words."
)
_DESCRIBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt": {"type": "string"}},
    "required": ["prompt"],
    "additionalProperties": False,
}
_QUALITY_SYSTEM = (
    "You check a generated portrait for defects a person would notice at once: distorted or "
    "mismatched eyes, extra or missing fingers, a broken or melted face. Small stylistic "
    "imperfections are not defects."
)
_QUALITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "defects": {"type": "array", "items": {"type": "string", "enum": list(DEFECTS)}},
    },
    "required": ["ok", "defects"],
    "additionalProperties": False,
}


def data_url(image: bytes) -> str:
    """The image as a JPEG data URL, scaled down (CPU work: call it in a thread)."""
    from PIL import Image  # only a process that shows OpenAI a picture loads Pillow

    with Image.open(io.BytesIO(image)) as im:
        im.thumbnail((MAX_SIDE, MAX_SIDE))
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


class OpenAIVision:
    def __init__(self, client: AsyncOpenAI, *, model: str) -> None:
        self._client = client
        self._model = model

    async def _ask(
        self,
        system: str,
        instruction: str,
        image: bytes,
        name: str,
        schema: dict[str, Any],
        *,
        detail: Detail,
    ) -> Any:
        url = await asyncio.to_thread(data_url, image)
        response = await self._client.chat.completions.create(
            model=self._model,
            messages=[
                {"role": "system", "content": system},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": instruction},
                        {"type": "image_url", "image_url": {"url": url, "detail": detail}},
                    ],
                },
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "strict": True, "schema": schema},
            },
            temperature=0.2,
        )
        content = response.choices[0].message.content if response.choices else None
        if not content:
            raise ValueError("the vision model returned no content")
        return json.loads(content)

    async def describe(self, image: bytes) -> str:
        # Scene, light, clothing and pose read well from the 512 px thumbnail of low detail.
        data = await self._ask(
            _DESCRIBE_SYSTEM,
            "Write the prompt for this photo.",
            image,
            "photo_prompt",
            _DESCRIBE_SCHEMA,
            detail="low",
        )
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the vision model's answer has no prompt")
        return prompt.strip()

    async def check_quality(self, image: bytes) -> QualityVerdict:
        # High detail, the whole image: low detail is a 512 px thumbnail where eyes are a few
        # pixels and fingers can't be counted. No face crop: hands, one of the defects looked
        # for, are mostly outside the face. The cost is bounded anyway: at most 1024 px on the
        # long side (MAX_SIDE) is 768 px on the short one for the model, 4 tiles, ~765 input
        # tokens, a small fraction of what the image cost on FAL.
        data = await self._ask(
            _QUALITY_SYSTEM,
            "Check this generated portrait.",
            image,
            "portrait_quality",
            _QUALITY_SCHEMA,
            detail="high",
        )
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise ValueError("the vision model's answer has no verdict")
        raw = data.get("defects")
        defects = (
            tuple(d for d in raw if isinstance(d, str) and d in DEFECTS) if isinstance(raw, list) else ()
        )
        return QualityVerdict(ok=data["ok"] and not defects, defects=defects)


__all__ = ["DEFECTS", "MAX_SIDE", "OpenAIPromptWriter", "OpenAIVision", "data_url"]
