"""The transcription pipeline end to end: real ffmpeg, the real ``openai`` client, the fake OpenAI server.

Recordings are ~50 s long and cut into 20 s chunks, so each test sends three chunks over HTTP.
The fake tells the chunks apart by the uploaded file's name (``chunk-0001.m4a``).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from aisha.providers.openai_transcriber import OpenAITranscriber, language_code, response_format_for
from aisha.sandbox.openai import FakeOpenAIServer, FakeTranscript, TranscriptionRequest, chat_completion
from aisha.transcription.audio import AudioConfig, AudioTooLong, NoAudioStream, find_ffmpeg, plan_chunks
from aisha.transcription.pipeline import RetryPolicy, TranscriptionFailed, TranscriptionPipeline, prompt_tail
from tests.media import lying_ogg

FFMPEG = find_ffmpeg()
AUDIO = AudioConfig(max_chunk_seconds=20.0)
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
API_KEY = "sk-test-0123456789abcdef"


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def chunk_index(call: TranscriptionRequest) -> int:
    match = re.fullmatch(r"chunk-(\d+)\.\w+", call.filename)
    assert match, call.filename
    return int(match.group(1))


def by_chunk(call: TranscriptionRequest) -> str:
    return f"Part {chunk_index(call)}."


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pipeline-media")


@pytest.fixture(scope="module")
def gapped(media: Path) -> Path:
    """~50 s of tones with a 1 s pause every 4-6 s: cut at silences into three chunks."""
    tones = [4.0, 5.5, 3.0, 6.0, 4.5, 5.0, 3.5, 6.5, 4.0]
    graph, labels = [], []
    for i, seconds in enumerate(tones):
        graph.append(f"sine=f={300 + 40 * i}:r=16000:d={seconds}[t{i}]")
        labels.append(f"[t{i}]")
        if i < len(tones) - 1:
            graph.append(f"anullsrc=r=16000:cl=mono,atrim=duration=1[g{i}]")
            labels.append(f"[g{i}]")
    graph.append(f"{''.join(labels)}concat=n={len(labels)}:v=0:a=1[out]")
    path = media / "gapped.m4a"
    ffmpeg("-filter_complex", ";".join(graph), "-map", "[out]", "-c:a", "aac", str(path))
    return path


@pytest.fixture(scope="module")
def continuous(media: Path) -> Path:
    """50 s of tone with no pause at all: every cut is hard."""
    path = media / "continuous.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=f=330:r=16000:d=50", str(path))
    return path


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=API_KEY) as fake:
        yield fake
        assert fake.errors == []


PipelineFactory = Callable[..., TranscriptionPipeline]


@pytest.fixture
async def make_pipeline(server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[PipelineFactory]:
    transcribers: list[OpenAITranscriber] = []

    def make(
        *,
        model: str = "whisper-1",
        concurrency: int = 4,
        retry: RetryPolicy = FAST_RETRY,
        timeout: float = 30.0,
    ) -> TranscriptionPipeline:
        transcriber = OpenAITranscriber(API_KEY, server.base_url, model, timeout=timeout)
        transcribers.append(transcriber)
        return TranscriptionPipeline(
            transcriber, audio=AUDIO, concurrency=concurrency, retry=retry, work_root=tmp_path
        )

    yield make
    for transcriber in transcribers:
        await transcriber.close()
    assert list(tmp_path.iterdir()) == [], "work files were left behind"


# ---------------------------------------------------------------------------------- results


async def test_chunks_are_merged_in_order_whatever_order_they_finish_in(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk
    server.delay = lambda call: 0.4 if chunk_index(call) == 0 else 0.0  # the first finishes last
    progress: list[tuple[int, int]] = []

    async def on_progress(done: int, total: int) -> None:
        progress.append((done, total))

    result = await make_pipeline().transcribe(gapped, language="en", on_progress=on_progress)

    assert result.text == "Part 0. Part 1. Part 2."
    assert [chunk_index(c) for c in server.transcription_calls][-1] == 0  # it really was last
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert result.attempts == 3
    assert result.duration == pytest.approx(50.0, abs=0.1)
    assert result.audio_seconds == pytest.approx(result.duration, abs=0.01)  # cut at silences: no overlap
    assert result.language == "en"
    assert all(c.language == "en" and c.model == "whisper-1" for c in server.transcription_calls)


async def test_default_fake_transcript_names_each_chunk_and_its_length(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    result = await make_pipeline().transcribe(gapped)

    lengths = [float(x) for x in re.findall(r"chunk-\d{4}\.m4a, ([\d.]+) seconds", result.text)]
    assert lengths == pytest.approx([c.duration for c in result.chunks], abs=0.15)
    assert result.language == "en"  # whisper's "english" comes back as an ISO code


async def test_whisper_segments_are_placed_on_the_whole_timeline(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    def script(call: TranscriptionRequest) -> FakeTranscript:
        i = chunk_index(call)
        return FakeTranscript(
            f"Part {i} one. Part {i} two.", [(0.5, 2.0, f"Part {i} one."), (3.0, 4.0, f"Part {i} two.")]
        )

    server.transcripts = script

    result = await make_pipeline().transcribe(gapped)

    assert result.segments is not None
    starts = [s.start for s in result.segments]
    expected = [c.start + offset for c in result.chunks for offset in (0.5, 3.0)]
    assert starts == pytest.approx(expected)
    assert all(call.response_format == "verbose_json" for call in server.transcription_calls)
    srt = result.srt
    assert srt is not None
    assert srt.startswith(
        "1\n00:00:00,500 --> 00:00:02,000\nPart 0 one.\n\n2\n00:00:03,000 --> 00:00:04,000\n"
    )
    assert srt.count(" --> ") == 6


async def test_gpt4o_models_are_asked_for_json_and_give_no_subtitles(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk

    result = await make_pipeline(model="gpt-4o-transcribe").transcribe(gapped)

    assert result.text == "Part 0. Part 1. Part 2."
    assert {call.response_format for call in server.transcription_calls} == {"json"}
    assert result.segments is None and result.srt is None


async def test_each_chunk_is_prompted_with_the_end_of_the_previous_text(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk

    await make_pipeline(concurrency=1).transcribe(gapped, prompt="Names: Aisha.")

    prompts = {chunk_index(c): c.prompt for c in server.transcription_calls}
    assert prompts == {0: "Names: Aisha.", 1: "Names: Aisha. Part 0.", 2: "Names: Aisha. Part 1."}


async def test_after_a_hard_cut_the_prompt_stops_where_the_next_chunk_starts(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, continuous: Path
) -> None:
    # The next chunk hears the last two seconds again: words said there are no context for it,
    # and a trailing "..." (a sentence cut off) would be carried on.
    def script(call: TranscriptionRequest) -> FakeTranscript:
        i = chunk_index(call)
        return FakeTranscript(
            f"Said {i}. Cut off {i}...", [(0.0, 8.0, f"Said {i}."), (8.0, 16.0, f"Cut off {i}...")]
        )

    server.transcripts = script

    result = await make_pipeline(concurrency=1).transcribe(continuous)

    assert all(c.hard_cut and c.overlap > 0 for c in result.chunks[1:])
    prompts = {chunk_index(c): c.prompt for c in server.transcription_calls}
    assert prompts == {0: None, 1: "Said 0.", 2: "Said 1."}


def test_a_trailing_ellipsis_is_no_prompt() -> None:
    assert prompt_tail("and then he said...", 100) == "and then he said"
    assert prompt_tail("and then he said…  ", 100) == "and then he said"
    assert prompt_tail("He left.", 100) == "He left."


async def test_words_heard_twice_across_a_hard_cut_are_merged_once(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, continuous: Path
) -> None:
    # A "word clock": word t is spoken from t to t+1 s. A chunk hears the words whose middle falls
    # inside it, and garbles the ones cut in half at its edges into "uh", as Whisper does.
    duration = 50.0
    plans = plan_chunks(duration, [], max_chunk=AUDIO.chunk_seconds, overlap=AUDIO.hard_cut_overlap)

    def clock(call: TranscriptionRequest) -> str:
        plan = plans[chunk_index(call)]
        words = []
        for t in range(math.floor(plan.start) - 1, math.ceil(plan.end) + 1):
            middle = t + 0.5
            if plan.start <= middle <= plan.end:
                words.append(f"w{t}")
            elif 0 <= middle <= duration and (
                plan.start - 0.9 < middle < plan.start or plan.end < middle < plan.end + 0.9
            ):
                words.append("uh")
        return " ".join(words)

    server.transcripts = clock

    result = await make_pipeline().transcribe(continuous)

    spans = [t for c in result.chunks for t in (c.start, c.end)]
    assert spans == pytest.approx([t for p in plans for t in (p.start, p.end)], abs=0.05)
    assert all(c.hard_cut for c in result.chunks[1:])
    heard = [call.text for call in sorted(server.transcription_calls, key=chunk_index)]
    assert all("uh" in text for text in heard[1:])  # the junctions really are ragged
    assert result.text == " ".join(f"w{t}" for t in range(50))
    assert result.audio_seconds == pytest.approx(duration + 2 * 2.0, abs=0.1)  # overlaps are sent twice


# ---------------------------------------------------------------------------------- failures


async def test_a_chunk_rate_limited_twice_is_retried_alone(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk
    server.fail_next(2, status=429, when=lambda call: call.filename == "chunk-0001.m4a")

    result = await make_pipeline().transcribe(gapped)

    assert result.text == "Part 0. Part 1. Part 2."
    assert [c.status for c in server.calls_for("chunk-0001.m4a")] == [429, 429, 200]
    assert [c.status for c in server.calls_for("chunk-0000.m4a")] == [200]
    assert [c.status for c in server.calls_for("chunk-0002.m4a")] == [200]
    assert result.attempts == 5


async def test_server_errors_and_timeouts_are_retried(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk
    server.fail_next(1, status=503, when=lambda call: call.filename == "chunk-0000.m4a")
    slow_once = {"chunk-0002.m4a"}

    def delay(call: TranscriptionRequest) -> float:
        if call.filename in slow_once:
            slow_once.discard(call.filename)
            return 3.0  # longer than the client's timeout
        return 0.0

    server.delay = delay

    result = await make_pipeline(timeout=1.0).transcribe(gapped)

    assert result.text == "Part 0. Part 1. Part 2."
    assert [c.status for c in server.calls_for("chunk-0000.m4a")] == [503, 200]
    assert len(server.calls_for("chunk-0001.m4a")) == 1
    assert len(server.calls_for("chunk-0002.m4a")) == 2  # the first one timed out


async def test_retry_after_is_honoured(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.fail_next(1, status=429, retry_after=0.5, when=lambda call: call.filename == "chunk-0000.m4a")

    await make_pipeline().transcribe(gapped)

    first, second = server.calls_for("chunk-0000.m4a")
    assert second.time - first.time >= 0.45


async def test_a_provider_failing_for_good_raises_transcription_failed(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.fail_always(500, when=lambda call: call.filename == "chunk-0002.m4a")

    with pytest.raises(TranscriptionFailed) as caught:
        await make_pipeline(concurrency=1).transcribe(gapped)

    assert caught.value.chunk_index == 2
    assert caught.value.attempts == FAST_RETRY.max_attempts
    assert caught.value.status == 500
    assert len(server.calls_for("chunk-0002.m4a")) == FAST_RETRY.max_attempts
    assert len(server.calls_for("chunk-0000.m4a")) == len(server.calls_for("chunk-0001.m4a")) == 1


async def test_a_permanent_error_is_not_retried_and_never_shows_the_key(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.fail_always(401, message=f"Incorrect API key provided: {API_KEY}. Find your key at ...")

    with pytest.raises(TranscriptionFailed) as caught:
        await make_pipeline(concurrency=1).transcribe(gapped)

    assert caught.value.attempts == 1
    assert caught.value.status == 401
    assert API_KEY not in str(caught.value)
    assert "0123456789abcdef" not in str(caught.value)
    assert len(server.transcription_calls) == 1  # the other chunks were cancelled, not sent


async def test_bad_audio_is_refused_before_any_request(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, media: Path, continuous: Path
) -> None:
    video = media / "video-only.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=d=1:s=32x32:r=5", "-c:v", "mpeg4", str(video))
    pipeline = make_pipeline()

    with pytest.raises(NoAudioStream):
        await pipeline.probe(video)
    with pytest.raises(NoAudioStream):
        await pipeline.transcribe(video)
    long_refusing = TranscriptionPipeline(
        OpenAITranscriber(API_KEY, server.base_url), audio=AudioConfig(max_duration=30.0)
    )
    with pytest.raises(AudioTooLong):
        await long_refusing.transcribe(continuous)

    assert server.transcription_calls == []


async def test_prepare_gives_the_real_length_before_any_request_and_all_of_it_is_sent(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, media: Path
) -> None:
    liar = lying_ogg(media / "liar.ogg", real=50.0, claimed=2.0)
    pipeline = make_pipeline()
    work = media / "prepared"  # the caller's work dir (the pipeline's own must end up empty)
    work.mkdir()

    info = await pipeline.probe(liar)
    prepared = await pipeline.prepare(liar, work, info=info)
    assert (info.duration, server.transcription_calls) == (pytest.approx(2.0, abs=0.1), [])
    assert prepared.duration == pytest.approx(50.0, abs=0.1)

    result = await pipeline.transcribe_prepared(prepared)
    sent = sum(call.duration or 0 for call in server.transcription_calls)
    assert len(server.transcription_calls) == 3  # 50 s in 20 s chunks
    assert sent == pytest.approx(result.audio_seconds, abs=0.3)
    assert result.audio_seconds >= 50.0 - 0.1
    shutil.rmtree(work)


async def test_a_broken_progress_callback_does_not_lose_the_transcript(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, gapped: Path
) -> None:
    server.transcripts = by_chunk

    async def on_progress(done: int, total: int) -> None:
        raise RuntimeError("message to edit not found")

    result = await make_pipeline().transcribe(gapped, on_progress=on_progress)

    assert result.text == "Part 0. Part 1. Part 2."


async def test_a_short_recording_is_one_request(
    server: FakeOpenAIServer, make_pipeline: PipelineFactory, media: Path
) -> None:
    voice = media / "voice.ogg"
    ffmpeg("-f", "lavfi", "-i", "sine=d=3", "-c:a", "libopus", str(voice))
    progress: list[tuple[int, int]] = []

    async def on_progress(done: int, total: int) -> None:
        progress.append((done, total))

    result = await make_pipeline().transcribe(voice, on_progress=on_progress)

    assert len(server.transcription_calls) == 1
    assert server.transcription_calls[0].filename == "chunk-0000.ogg"
    assert progress == [(1, 1)]
    assert result.messages() == [result.text]


# ------------------------------------------------------------------------------ the adapter


def test_response_format_follows_the_model() -> None:
    assert response_format_for("whisper-1") == "verbose_json"
    assert response_format_for("Systran/faster-whisper-large-v3") == "verbose_json"
    assert response_format_for("gpt-4o-transcribe") == "json"
    assert response_format_for("gpt-4o-mini-transcribe") == "json"


def test_language_names_become_codes() -> None:
    assert language_code("russian") == "ru"
    assert language_code("EN") == "en"
    assert language_code("klingon") is None
    assert language_code(None) is None


async def test_text_response_format(server: FakeOpenAIServer, media: Path) -> None:
    voice = media / "voice-text.ogg"
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "libopus", str(voice))
    server.transcripts = ["Hello there."]
    async with OpenAITranscriber(
        API_KEY, server.base_url, "whisper-1", response_format="text"
    ) as transcriber:
        result = await transcriber.transcribe(voice, language=None, prompt=None)

    assert result.text == "Hello there."
    assert result.segments is None
    assert server.transcription_calls[0].response_format == "text"


async def test_fake_rejects_verbose_json_for_gpt4o_as_openai_does(
    server: FakeOpenAIServer, media: Path
) -> None:
    voice = media / "voice-gpt.ogg"
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "libopus", str(voice))
    transcriber = OpenAITranscriber(
        API_KEY, server.base_url, "gpt-4o-transcribe", response_format="verbose_json"
    )

    with pytest.raises(Exception, match="not compatible"):
        await transcriber.transcribe(voice, language=None, prompt=None)
    await transcriber.close()


# ----------------------------------------------------------------------- the fake's chat API


async def test_fake_chat_completions(server: FakeOpenAIServer) -> None:
    client = AsyncOpenAI(api_key=API_KEY, base_url=server.base_url, max_retries=0)
    try:
        first = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
        server.chat_handler = lambda body: chat_completion(
            f"echo: {body['messages'][-1]['content']}", model=body["model"]
        )
        second = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "translate this"}]
        )
    finally:
        await client.close()

    assert first.choices[0].message.content == "Simulated answer."
    assert second.choices[0].message.content == "echo: translate this"
    assert second.model == "gpt-4o"
    assert [call["model"] for call in server.chat_calls] == ["gpt-4o-mini", "gpt-4o"]


async def test_fake_refuses_a_wrong_key(server: FakeOpenAIServer) -> None:
    import openai

    client = AsyncOpenAI(api_key="sk-wrong", base_url=server.base_url, max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
    finally:
        await client.close()
