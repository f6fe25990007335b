"""Background jobs run in-process by default and through Redis with a separate receiver."""

from __future__ import annotations

import asyncio
import contextlib

from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.storage.redis import RedisStorage
from sqlalchemy import func, select
from taskiq.api import run_receiver_task

from aisha.bot.app import create_fsm_storage
from aisha.bot.fsm import SqlStorage
from aisha.config import load_settings
from aisha.db.models import FsmRecord
from aisha.jobs.metrics import JobMetrics, create_job_metrics
from aisha.jobs.queue import JobQueue, create_broker
from aisha.jobs.recovery import RecoverySweep
from tests.conftest import Database


async def test_in_memory_queue_runs_the_job_in_this_process() -> None:
    done: asyncio.Queue[str] = asyncio.Queue()

    async def greet(*, name: str) -> None:
        await done.put(f"hello {name}")

    queue = JobQueue(create_broker(None))
    queue.register("test.greet", greet)
    await queue.startup()
    try:
        await queue.enqueue("test.greet", name="world")
        assert await asyncio.wait_for(done.get(), 5) == "hello world"
    finally:
        await queue.shutdown()


async def test_redis_queue_job_runs_in_the_worker_not_the_sender(redis_url: str) -> None:
    ran_in: asyncio.Queue[str] = asyncio.Queue()

    def make_queue(process: str) -> JobQueue:
        async def record(*, row_id: str) -> None:
            await ran_in.put(f"{process}:{row_id}")

        queue = JobQueue(create_broker(redis_url))
        queue.register("test.record", record)
        return queue

    sender, worker = make_queue("api"), make_queue("worker")
    await sender.startup()
    await worker.startup()
    receiver = asyncio.create_task(run_receiver_task(worker.broker))
    try:
        await sender.enqueue("test.record", row_id="42")
        assert await asyncio.wait_for(ran_in.get(), 10) == "worker:42"
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        await sender.shutdown()
        await worker.shutdown()


async def test_fsm_state_lives_in_redis_when_configured(redis_url: str, sqlite_db: Database) -> None:
    settings = load_settings(redis_url=redis_url)
    key = StorageKey(bot_id=1, chat_id=10, user_id=10)
    first = create_fsm_storage(settings, sqlite_db.sessions)
    assert isinstance(first, RedisStorage)
    await first.set_state(key, "Wizard:name")
    await first.close()
    second = create_fsm_storage(settings, sqlite_db.sessions)  # another process, or after a restart
    assert await second.get_state(key) == "Wizard:name"
    await second.close()


async def test_fsm_state_without_redis_survives_a_restart(db: Database) -> None:
    settings = load_settings(redis_url=None, database_url=db.url)
    key = StorageKey(bot_id=1, chat_id=10, user_id=10)
    first = create_fsm_storage(settings, db.sessions)
    assert isinstance(first, SqlStorage)
    await first.set_state(key, "Wizard:photos")
    await first.update_data(key, {"avatar_id": "a1", "accepted": 3})
    other = StorageKey(bot_id=1, chat_id=20, user_id=20)
    assert await first.get_state(other) is None

    second = create_fsm_storage(settings, db.sessions)  # a new process after a restart
    assert await second.get_state(key) == "Wizard:photos"
    assert await second.get_data(key) == {"avatar_id": "a1", "accepted": 3}
    await second.set_state(key, None)
    await second.set_data(key, {})
    assert await second.get_state(key) is None
    assert await second.get_data(key) == {}
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(FsmRecord)) == 0


async def _job_figures(metrics: JobMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in await metrics.families()
        for sample in family.samples
    }


async def test_a_job_that_raises_is_counted_by_its_exception_class() -> None:
    metrics = JobMetrics()

    async def explode(*, row_id: str) -> None:
        raise ConnectionResetError(f"lost {row_id}")

    queue = JobQueue(create_broker(None), metrics=metrics)
    queue.register("test.explode", explode)
    await queue.startup()
    try:
        await queue.enqueue("test.explode", row_id="1")
        await queue.enqueue("test.explode", row_id="2")
        errors = ("aisha_job_errors_total", (("job", "test.explode"), ("kind", "ConnectionResetError")))
        for _ in range(250):
            if (await _job_figures(metrics)).get(errors) == 2:
                break
            await asyncio.sleep(0.02)
        assert (await _job_figures(metrics)).get(errors) == 2
    finally:
        await queue.shutdown()


async def test_job_figures_from_two_processes_add_up_in_redis(redis_url: str) -> None:
    # A worker fails a job and an API process delivers a generation: either process reports both.
    worker, api = create_job_metrics(redis_url), create_job_metrics(redis_url)
    try:
        await worker.job_failed("transcription.run", "provider_failed")
        await api.job_failed("transcription.run", "provider_failed")
        await worker.generation_delivered(12.5)
        await api.generation_delivered(700.0)  # past the last bucket: only +Inf
        for metrics in (worker, api):
            figures = await _job_figures(metrics)
            key = ("aisha_job_errors_total", (("job", "transcription.run"), ("kind", "provider_failed")))
            assert figures[key] == 2
            assert figures[("aisha_generation_duration_seconds_bucket", (("le", "10.0"),))] == 0
            assert figures[("aisha_generation_duration_seconds_bucket", (("le", "15.0"),))] == 1
            assert figures[("aisha_generation_duration_seconds_bucket", (("le", "600.0"),))] == 1
            assert figures[("aisha_generation_duration_seconds_bucket", (("le", "+Inf"),))] == 2
            assert figures[("aisha_generation_duration_seconds_count", ())] == 2
            assert figures[("aisha_generation_duration_seconds_sum", ())] == 712.5
    finally:
        await worker.aclose()
        await api.aclose()


async def test_recovery_sweep_runs_every_check_even_when_one_fails() -> None:
    metrics = JobMetrics()
    sweep = RecoverySweep(metrics=metrics)

    async def broken() -> int:
        raise RuntimeError("provider down")

    async def healthy() -> int:
        return 3

    sweep.register("broken", broken)
    sweep.register("healthy", healthy)
    assert await sweep.run_once() == {"broken": 0, "healthy": 3}
    errors = ("aisha_job_errors_total", (("job", "recovery.broken"), ("kind", "RuntimeError")))
    assert (await _job_figures(metrics))[errors] == 1
