"""Prompt enhancement: an optional LLM layer, then a deterministic layer that always runs.

The deterministic layer is the one that must be right every time: it puts the avatar's trigger
phrase in exactly once (a portrait avatar is the subject, a style avatar is the style), adds
cinematic detail the user did not ask for (light, lens and camera, composition) and face and eye
detail for portraits, never overrides what the user did ask for (an explicit style, framing or
light), and keeps the result within what the model reads.

The LLM layer (a PromptWriter: an OpenAI chat model with structured output) translates a non-English prompt to English
and enriches it; whatever it returns still goes through the deterministic layer. On a timeout,
an error or no client at all the user's own prompt goes through the deterministic layer alone.
"""

from __future__ import annotations

import asyncio
import re

import structlog

from aisha.avatars.models import AvatarType
from aisha.generation.models import EnhancedPrompt, PromptSubject
from aisha.generation.ports import PromptWriter

log = structlog.get_logger(__name__)

# FLUX reads prompts through T5 with 512 tokens; ~1500 characters of English stays well inside,
# and the CLIP encoder sees the first 77 tokens, so what matters most goes first.
MODEL_PROMPT_MAX_CHARS = 1500

# What counts as the user having decided something; then we add nothing of that kind.
_STYLE = re.compile(
    r"\b(anime|manga|cartoon\w*|comic\w*|watercolou?r|oil painting|painting|painted|illustrat\w+|sketch\w*|"
    r"drawing|drawn|pencil|charcoal|pixel art|3d render|render(ed|ing)?|cgi|low[- ]poly|vector|pop art|"
    r"digital art|concept art|line art|claymation|ukiyo-e|art nouveau|impressionis\w*|surreal\w*|"
    r"black and white|monochrome|sepia|polaroid|in the style of|pixar|disney|ghibli|lego)\b",
    re.IGNORECASE,
)
_FRAMING = re.compile(
    r"\b(close[- ]?up|headshot|head shot|portrait shot|bust|half[- ]body|waist[- ]up|full[- ]body|"
    r"full[- ]length|wide[- ]angle|wide shot|medium shot|long shot|establishing shot|aerial|"
    r"bird'?s[- ]eye|drone shot|low[- ]angle|high[- ]angle|from above|from below|over the shoulder|"
    r"profile view|side view|selfie|top[- ]down|framing|framed)\b",
    re.IGNORECASE,
)
_LIGHT = re.compile(
    r"\b(light|lights|lighting|lit|backlit|backlight\w*|sunlight|sunlit|moonlight|moonlit|golden hour|"
    r"blue hour|sunset|sunrise|dusk|dawn|night|neon|candle\w*|shadows?|dark|dim|overcast|studio|"
    r"flash|chiaroscuro|noir)\b",
    re.IGNORECASE,
)
_LENS = re.compile(
    r"(\b\d{2,3}\s?mm\b|\b(lens|bokeh|depth of field|aperture|f/\d+(\.\d+)?|shot on|camera|dslr|"
    r"canon|nikon|sony|leica|hasselblad|fujifilm|kodak|portra|film grain|iphone)\b)",
    re.IGNORECASE,
)
_COMPOSITION = re.compile(
    r"\b(composition|rule of thirds|centered|centred|symmetric\w*|negative space|leading lines)\b",
    re.IGNORECASE,
)
# The user's own words for themselves: where a portrait's trigger phrase belongs.
_SELF = re.compile(r"\b(me|myself)\b", re.IGNORECASE)

_FACE_DETAIL = "detailed face, sharp focus on the eyes, clear detailed irises, symmetrical eyes"
_SKIN_DETAIL = "natural skin texture"
_LIGHT_DETAIL = "cinematic lighting, soft natural key light"
_PORTRAIT_LENS = "shot on a full-frame camera, 85mm lens, shallow depth of field"
_SCENE_LENS = "shot on a full-frame camera, 35mm lens"
_COMPOSITION_DETAIL = "balanced cinematic composition"
_PHOTO_QUALITY = "photorealistic, highly detailed"


# --- the deterministic layer -----------------------------------------------------------------


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;])(\s*[,;])+", r"\1", text)
    return text.strip(" ,;")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;.")


def _without_trigger(text: str, trigger: str) -> str:
    return _tidy(re.sub(re.escape(trigger), " ", text, flags=re.IGNORECASE))


def enhance_deterministic(
    prompt: str, *, subject: PromptSubject | None, max_chars: int = MODEL_PROMPT_MAX_CHARS
) -> str:
    """The prompt with the trigger phrase exactly once and the detail the user left open."""
    text = _tidy(prompt)
    trigger = subject.trigger_phrase if subject else None
    portrait = subject is not None and subject.type is AvatarType.PORTRAIT
    if trigger:
        text = _without_trigger(text, trigger)
        # Room for the trigger phrase whatever else has to go.
        room = len(trigger) + (len(", ") if portrait else len(", in the style of "))
        text = _truncate(text, max_chars - room)
        if portrait:
            text, replaced = _SELF.subn(trigger, text, count=1)
            if not replaced:
                text = f"{trigger}, {text}" if text else trigger
        else:
            text = f"{text}, in the style of {trigger}" if text else f"in the style of {trigger}"
    else:
        text = _truncate(text, max_chars)

    explicit_style = bool(_STYLE.search(prompt))
    details: list[str] = []
    if portrait:
        details.append(_FACE_DETAIL)
    if not _LIGHT.search(prompt):
        details.append(_LIGHT_DETAIL)
    if not explicit_style and not _LENS.search(prompt):
        details.append(_PORTRAIT_LENS if portrait else _SCENE_LENS)
    if not _FRAMING.search(prompt) and not _COMPOSITION.search(prompt):
        details.append(_COMPOSITION_DETAIL)
    if not explicit_style:
        if portrait:
            details.append(_SKIN_DETAIL)
        details.append(_PHOTO_QUALITY)
    # Most important first; each detail only if the whole still fits.
    for detail in details:
        if len(text) + 2 + len(detail) <= max_chars:
            text = f"{text}, {detail}"
    return text


class PromptEnhancer:
    def __init__(
        self,
        *,
        writer: PromptWriter | None,
        timeout: float = 20.0,
        max_chars: int = MODEL_PROMPT_MAX_CHARS,
    ) -> None:
        self._writer = writer
        self._timeout = timeout
        self._max_chars = max_chars

    @property
    def has_llm(self) -> bool:
        return self._writer is not None

    async def enhance(
        self, prompt: str, *, subject: PromptSubject | None, llm: bool = True
    ) -> EnhancedPrompt:
        """`llm=False` for a prompt a model already wrote in English (photo to prompt)."""
        rewritten: str | None = None
        if self._writer is not None and llm:
            portrait = subject is not None and subject.type is AvatarType.PORTRAIT
            try:
                async with asyncio.timeout(self._timeout):
                    rewritten = await self._writer.rewrite(prompt, portrait=portrait)
            except Exception as exc:  # timeout, HTTP error, bad JSON: the deterministic layer alone
                log.warning("generation.enhance_llm_failed", error=type(exc).__name__)
        text = enhance_deterministic(rewritten or prompt, subject=subject, max_chars=self._max_chars)
        return EnhancedPrompt(text=text, llm_used=rewritten is not None)


__all__ = [
    "MODEL_PROMPT_MAX_CHARS",
    "EnhancedPrompt",
    "PromptEnhancer",
    "PromptSubject",
    "enhance_deterministic",
]
