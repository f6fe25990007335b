"""Vision through any OpenAI-compatible model: a reference photo to a prompt, and a quality check
of generated portraits. Both answer with structured output (json_schema)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from PIL import Image

if TYPE_CHECKING:
    from openai import AsyncOpenAI

# The model sees at most this many pixels on the long side: enough for scene and defects.
MAX_SIDE = 1024
DEFECTS = ("distorted_eyes", "extra_fingers", "broken_face", "other")
Detail = Literal["low", "high"]


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    ok: bool
    defects: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "defects": list(self.defects)}


class Vision(Protocol):
    async def describe(self, image: bytes) -> str:
        """An image prompt for the scene, light, clothing and pose; never who the person is."""
        ...

    async def check_quality(self, image: bytes) -> QualityVerdict: ...


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
