"""The fake OpenAI refuses what OpenAI refuses, through the real `openai` client, and what the bot
sends (transcription, vision, the prompt writer) passes those same checks."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from aisha.providers.openai_chat import OpenAIPromptWriter, OpenAIVision, data_url
from aisha.providers.openai_transcriber import OpenAITranscriber
from aisha.sandbox.openai import MAX_UPLOAD_BYTES, FakeOpenAIServer

KEY = "sk-strict"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=KEY) as fake:
        yield fake
        assert fake.errors == []


@pytest.fixture
def client(server: FakeOpenAIServer) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)


def _wav(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1536, 2048), (120, 90, 60)).save(out, "JPEG")
    return out.getvalue()


def _refusal(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = caught.value.body
    assert isinstance(body, dict)
    return body


# --- transcription -----------------------------------------------------------------------------


async def test_an_upload_over_25_mb_is_refused_with_413(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("long.mp3", b"\xff\xfb" + bytes(MAX_UPLOAD_BYTES))
        )
    assert caught.value.status_code == 413
    assert "Maximum content size limit (26214400) exceeded" in _refusal(caught)["message"]


@pytest.mark.parametrize("name", ["voice.aac", "voice.opus", "voice.wma", "voice"])
async def test_a_file_format_outside_openais_list_is_refused(client: AsyncOpenAI, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.transcriptions.create(model="whisper-1", file=(name, _wav()))
    assert _refusal(caught)["message"].startswith("Invalid file format. Supported formats: ['flac', 'm4a'")


@pytest.mark.parametrize(
    ("model", "response_format"),
    [
        ("gpt-4o-transcribe", "verbose_json"),
        ("gpt-4o-transcribe", "srt"),
        ("gpt-4o-mini-transcribe", "vtt"),
        ("whisper-1", "xml"),
    ],
)
async def test_a_response_format_the_model_does_not_answer_is_refused(
    client: AsyncOpenAI, model: str, response_format: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.transcriptions.create(
            model=model, file=("voice.wav", _wav()), response_format=response_format
        )
    assert _refusal(caught)["param"] == "response_format"


@pytest.mark.parametrize(
    ("model", "response_format"),
    [("whisper-1", "srt"), ("whisper-1", "vtt"), ("gpt-4o-mini-transcribe", "text")],
)
async def test_the_formats_a_model_does_answer(client: AsyncOpenAI, model: str, response_format: Any) -> None:
    answer = await client.audio.transcriptions.create(
        model=model, file=("voice.wav", _wav()), response_format=response_format
    )
    assert "Simulated transcript of voice.wav" in str(answer)
    if response_format == "srt":
        assert str(answer).startswith("1\n00:00:00,000 --> 00:00:01,000\n")
    if response_format == "vtt":
        assert str(answer).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
async def test_what_the_bot_sends_for_transcription_is_accepted(
    server: FakeOpenAIServer, tmp_path: Path, model: str
) -> None:
    path = tmp_path / "chunk.wav"
    path.write_bytes(_wav())
    result = await OpenAITranscriber(KEY, server.base_url, model).transcribe(path, language="en", prompt=None)
    assert "Simulated transcript of chunk.wav" in result.text
    assert [call.status for call in server.transcription_calls] == [200]


# --- chat and vision ---------------------------------------------------------------------------


def _image_message(detail: str, role: str = "user") -> dict[str, Any]:
    return {
        "role": role,
        "content": [
            {"type": "text", "text": "Check it."},
            {"type": "image_url", "image_url": {"url": data_url(_jpeg()), "detail": detail}},
        ],
    }


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([_image_message("ultra")], {}, "messages.[0].content.[1].image_url.detail"),
        ([_image_message("high", role="system")], {}, "messages.[0].content.[1].type"),
        ([{"role": "user"}], {}, "messages.[0].content"),
        ([{"role": "robot", "content": "hi"}], {}, "messages.[0].role"),
        ([{"role": "user", "content": [{"type": "text"}]}], {}, "messages.[0].content.[0].text"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            {},
            "messages.[0].content.[0].image_url.url",
        ),
        ([{"role": "user", "content": "hi"}], {"temperature": 3}, "temperature"),
        (
            [{"role": "user", "content": "hi"}],
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "verdict",
                        "strict": True,
                        "schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
                    },
                }
            },
            "response_format",
        ),
        (
            [{"role": "user", "content": "hi"}],
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a verdict", "schema": {}}}},
            "response_format.json_schema.name",
        ),
    ],
)
async def test_a_chat_request_openai_would_refuse_is_refused(
    client: AsyncOpenAI, messages: list[Any], extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages, **extra)
    assert _refusal(caught)["param"] == param


async def test_what_the_bot_sends_for_vision_and_prompts_is_accepted(
    server: FakeOpenAIServer, client: AsyncOpenAI
) -> None:
    server.structured_replies["portrait_quality"] = {"ok": True, "defects": []}
    server.structured_replies["photo_prompt"] = {"prompt": "me on a rooftop at dusk"}
    server.structured_replies["image_prompt"] = {"prompt": "me in Rome, cinematic", "source_language": "en"}
    vision = OpenAIVision(client, model="gpt-4o")
    assert (await vision.check_quality(_jpeg())).ok
    assert await vision.describe(_jpeg()) == "me on a rooftop at dusk"
    writer = OpenAIPromptWriter(client, model="gpt-4o-mini")
    assert await writer.rewrite("me in Rome", portrait=True)
    details = [
        part["image_url"]["detail"]
        for call in server.chat_calls
        for message in call["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part["type"] == "image_url"
    ]
    assert details == ["high", "low"]  # the quality check looks closely; a description needs less
