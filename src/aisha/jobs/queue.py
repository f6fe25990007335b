"""Background jobs on taskiq: its in-memory broker inside the one process by default, its Redis
broker when REDIS_URL is set (then `aisha worker` processes run them).

Jobs are idempotent and keyed by the id of the database row they drive; the row, not the queue,
is the truth, so a job lost between commit and enqueue is re-driven by the recovery sweep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from taskiq import AsyncBroker, InMemoryBroker
from taskiq.decor import AsyncTaskiqDecoratedTask

from aisha.jobs.metrics import JobMetrics

JobFunction = Callable[..., Awaitable[None]]
log = structlog.get_logger(__name__)


def create_broker(redis_url: str | None) -> AsyncBroker:
    if redis_url:
        from taskiq_redis import ListQueueBroker

        return ListQueueBroker(redis_url, queue_name="aisha:jobs")
    return InMemoryBroker(await_inplace=False)


class JobQueue:
    def __init__(self, broker: AsyncBroker, *, metrics: JobMetrics | None = None) -> None:
        self.broker = broker
        self._metrics = metrics or JobMetrics()
        self._tasks: dict[str, AsyncTaskiqDecoratedTask[..., Any]] = {}

    @property
    def in_process(self) -> bool:
        return isinstance(self.broker, InMemoryBroker)

    def register(self, job: str, function: JobFunction) -> None:
        """Make `function(**kwargs)` runnable as `job` in every process that registers it."""

        async def run(**kwargs: Any) -> None:
            try:
                await function(**kwargs)
            except Exception as exc:
                # The row stays in its non-terminal status; the recovery sweep drives it again.
                log.exception("job.failed", job=job, arguments={k: str(v) for k, v in kwargs.items()})
                await self._metrics.job_failed(job, type(exc).__name__)
                raise

        run.__name__ = job.replace(".", "_")
        self._tasks[job] = self.broker.register_task(run, task_name=job)

    async def enqueue(self, job: str, /, **kwargs: Any) -> None:
        await self._tasks[job].kiq(**kwargs)

    async def startup(self) -> None:
        await self.broker.startup()

    async def shutdown(self) -> None:
        await self.broker.shutdown()
