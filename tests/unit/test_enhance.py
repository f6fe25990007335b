"""The prompt enhancer: the deterministic layer's promises, and the LLM layer over the real
`openai` client against the fake OpenAI server (translation, and the fallback when it fails)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from aisha.avatars.models import AvatarType
from aisha.generation.enhance import (
    MODEL_PROMPT_MAX_CHARS,
    PromptEnhancer,
    PromptSubject,
    enhance_deterministic,
)
from aisha.providers.openai_chat import OpenAIPromptWriter
from aisha.sandbox.openai import FakeOpenAIServer, chat_json_schema

TRIGGER = "ohwx1a2b3c4d5e"
PORTRAIT = PromptSubject(TRIGGER, AvatarType.PORTRAIT)
STYLE = PromptSubject(TRIGGER, AvatarType.STYLE)


def _count(text: str) -> int:
    return text.lower().count(TRIGGER.lower())


# --- the deterministic layer -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "me as an astronaut on Mars",
        "an astronaut on Mars",
        f"{TRIGGER} as an astronaut, {TRIGGER} smiling, {TRIGGER.upper()}",
        "me and myself, a picture of me",
        "",
    ],
)
@pytest.mark.parametrize("subject", [PORTRAIT, STYLE])
def test_trigger_phrase_appears_exactly_once(prompt: str, subject: PromptSubject) -> None:
    assert _count(enhance_deterministic(prompt, subject=subject)) == 1


def test_portrait_trigger_is_the_subject_and_style_trigger_is_the_style() -> None:
    portrait = enhance_deterministic("me as an astronaut on Mars", subject=PORTRAIT)
    assert portrait.startswith(f"{TRIGGER} as an astronaut on Mars")
    assert "detailed face" in portrait and "eyes" in portrait
    without_pronoun = enhance_deterministic("a knight in armour", subject=PORTRAIT)
    assert without_pronoun.startswith(f"{TRIGGER}, a knight in armour")
    style = enhance_deterministic("a castle on a hill", subject=STYLE)
    assert style.startswith(f"a castle on a hill, in the style of {TRIGGER}")
    assert "detailed face" not in style  # face detail is for portraits


def test_cinematic_detail_is_added_when_the_user_left_it_open() -> None:
    text = enhance_deterministic("me in a cafe", subject=PORTRAIT)
    assert "cinematic lighting" in text
    assert "85mm lens" in text
    assert "composition" in text


@pytest.mark.parametrize(
    ("prompt", "absent"),
    [
        ("me as an anime character", ["lens", "photorealistic", "skin texture"]),  # explicit style
        ("me in neon light at night", ["cinematic lighting"]),  # explicit light
        ("close-up of me reading", ["composition"]),  # explicit framing
        ("me, shot on 35mm film with a Leica", ["85mm lens"]),  # explicit camera
    ],
)
def test_explicit_user_choices_are_not_overridden(prompt: str, absent: list[str]) -> None:
    text = enhance_deterministic(prompt, subject=PORTRAIT)
    for fragment in absent:
        assert fragment not in text
    # What the user wrote is still there, word for word (with the trigger for "me").
    assert prompt.replace("me", TRIGGER, 1) in text


def test_without_an_avatar_no_trigger_and_no_face_detail() -> None:
    text = enhance_deterministic("a red fox in the snow", subject=None)
    assert text.startswith("a red fox in the snow")
    assert "detailed face" not in text and "cinematic lighting" in text


@pytest.mark.parametrize("subject", [PORTRAIT, STYLE, None])
@pytest.mark.parametrize("limit", [60, 300, MODEL_PROMPT_MAX_CHARS])
def test_result_stays_within_the_limit(subject: PromptSubject | None, limit: int) -> None:
    long = "me walking through an enormous market full of colourful spices and lanterns " * 40
    text = enhance_deterministic(long, subject=subject, max_chars=limit)
    assert len(text) <= limit
    if subject is not None:
        assert _count(text) == 1


def test_detail_is_dropped_before_the_users_words() -> None:
    prompt = "me on a boat at sea"
    text = enhance_deterministic(prompt, subject=PORTRAIT, max_chars=len(prompt) + len(TRIGGER) + 5)
    assert text == f"{TRIGGER} on a boat at sea"


# --- the LLM layer over the real openai client -------------------------------------------------


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key="sk-test") as server:
        yield server


@pytest.fixture
async def client(openai_server: FakeOpenAIServer) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(api_key="sk-test", base_url=openai_server.base_url, max_retries=0, timeout=5)
    yield client
    await client.close()


async def test_russian_prompt_is_translated_by_the_llm_then_enhanced(
    openai_server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    seen: list[dict[str, Any]] = []

    def translate(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"prompt": "me as an astronaut on Mars, red dust, Earth in the sky", "source_language": "ru"}

    openai_server.structured_replies["image_prompt"] = translate
    enhancer = PromptEnhancer(writer=OpenAIPromptWriter(client, model="gpt-4o-mini"), timeout=5)

    result = await enhancer.enhance("я в роли астронавта на Марсе", subject=PORTRAIT)

    assert result.llm_used
    assert result.text.startswith(f"{TRIGGER} as an astronaut on Mars, red dust")
    assert _count(result.text) == 1
    assert "detailed face" in result.text  # the deterministic layer ran on the LLM's output
    body = seen[0]
    assert body["model"] == "gpt-4o-mini"
    schema = chat_json_schema(body)
    assert schema is not None and schema[1]["required"] == ["prompt", "source_language"]
    assert body["messages"][-1]["content"] == "я в роли астронавта на Марсе"


async def test_llm_that_repeats_the_trigger_still_gives_it_once(
    openai_server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    openai_server.structured_replies["image_prompt"] = {
        "prompt": f"{TRIGGER} man, portrait of {TRIGGER} in a forest",
        "source_language": "en",
    }
    enhancer = PromptEnhancer(writer=OpenAIPromptWriter(client, model="gpt-4o-mini"), timeout=5)
    result = await enhancer.enhance("me in a forest", subject=PORTRAIT)
    assert result.llm_used and _count(result.text) == 1


async def test_llm_error_falls_back_to_the_deterministic_layer(
    openai_server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    openai_server.fail_always(500, endpoint="chat")
    enhancer = PromptEnhancer(writer=OpenAIPromptWriter(client, model="gpt-4o-mini"), timeout=5)
    result = await enhancer.enhance("я на пляже", subject=PORTRAIT)
    assert not result.llm_used
    assert result.text == enhance_deterministic("я на пляже", subject=PORTRAIT)
    assert len(openai_server.chat_calls) == 1


async def test_llm_timeout_falls_back_to_the_deterministic_layer(
    openai_server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    answer = asyncio.Event()  # the model answers only once the test has its result

    async def hanging(body: dict[str, Any]) -> dict[str, Any]:
        await answer.wait()
        return {"choices": []}

    openai_server.chat_handler = hanging
    patient = client.with_options(timeout=60)  # only the enhancer's own timeout can end the wait
    enhancer = PromptEnhancer(writer=OpenAIPromptWriter(patient, model="gpt-4o-mini"), timeout=0.3)
    try:
        async with asyncio.timeout(30):  # a guard against a hang, not a latency bound
            result = await enhancer.enhance("me in Paris", subject=STYLE)
    finally:
        answer.set()
    assert not result.llm_used
    assert result.text == enhance_deterministic("me in Paris", subject=STYLE)


async def test_llm_answer_that_is_not_the_schema_falls_back(
    openai_server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    openai_server.structured_replies["image_prompt"] = {"something": "else"}
    enhancer = PromptEnhancer(writer=OpenAIPromptWriter(client, model="gpt-4o-mini"), timeout=5)
    result = await enhancer.enhance("a dog", subject=None)
    assert not result.llm_used and result.text == enhance_deterministic("a dog", subject=None)


async def test_no_openai_key_means_deterministic_only() -> None:
    result = await PromptEnhancer(writer=None).enhance("me at sunset", subject=PORTRAIT)
    assert not result.llm_used
    assert json.dumps(result.text)  # plain text
    assert "cinematic lighting" not in result.text  # "sunset" is the user's light
