"""Figures of background work: job errors by kind and the generation latency.

Jobs run in `aisha worker` processes, which serve no /metrics, and FAL webhooks finish jobs in
whichever API process they reach; so with REDIS_URL set these figures are kept in Redis and every
API process reports the same totals (like the database figures). Without Redis everything runs in
one process and they stay in its memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import structlog
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from redis.asyncio import Redis  # imported where a client is made: only with REDIS_URL

log = structlog.get_logger(__name__)

# From the user's confirmation to the images in the chat: FLUX takes from seconds to minutes.
GENERATION_BUCKETS = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
ERRORS_KEY = "aisha:metrics:job_errors"
GENERATION_KEY = "aisha:metrics:generation_seconds"
SEPARATOR = "|"  # between job and kind in a field name; neither contains it


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus writes it."""
    return "+Inf" if bound == float("inf") else repr(bound)


class FigureStore(Protocol):
    async def add(self, key: str, amounts: Mapping[str, float]) -> None: ...

    async def read(self, key: str) -> dict[str, float]: ...

    async def aclose(self) -> None: ...


class MemoryFigures:
    def __init__(self) -> None:
        self._hashes: dict[str, dict[str, float]] = defaultdict(dict)

    async def add(self, key: str, amounts: Mapping[str, float]) -> None:
        figures = self._hashes[key]
        for name, amount in amounts.items():
            figures[name] = figures.get(name, 0.0) + amount

    async def read(self, key: str) -> dict[str, float]:
        return dict(self._hashes[key])

    async def aclose(self) -> None:
        return None


class RedisFigures:
    """One Redis hash per figure; HINCRBYFLOAT keeps concurrent processes from losing counts."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def add(self, key: str, amounts: Mapping[str, float]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for name, amount in amounts.items():
                pipe.hincrbyfloat(key, name, amount)
            await pipe.execute()

    async def read(self, key: str) -> dict[str, float]:
        raw = await self._redis.hgetall(key)
        return {
            name.decode() if isinstance(name, bytes) else name: float(value) for name, value in raw.items()
        }

    async def aclose(self) -> None:
        await self._redis.aclose()


class JobMetrics:
    def __init__(self, store: FigureStore | None = None) -> None:
        self._store = store or MemoryFigures()

    async def job_failed(self, job: str, kind: str) -> None:
        """A job raised (kind: the exception class) or ended failed (kind: its reason code)."""
        await self._add(ERRORS_KEY, {f"{job}{SEPARATOR}{kind}": 1})

    async def generation_delivered(self, seconds: float) -> None:
        bucket = next((b for b in GENERATION_BUCKETS if seconds <= b), float("inf"))
        await self._add(GENERATION_KEY, {_le(bucket): 1, "sum": seconds})

    async def _add(self, key: str, amounts: Mapping[str, float]) -> None:
        # A figure is never worth failing the job for (Redis down, say).
        try:
            await self._store.add(key, amounts)
        except Exception as exc:
            log.warning("metrics.write_failed", key=key, error=type(exc).__name__)

    async def families(self) -> list[Metric]:
        errors = CounterMetricFamily(
            "aisha_job_errors",
            "Background jobs that raised (kind: exception class) or ended failed (kind: reason).",
            labels=["job", "kind"],
        )
        for name, value in sorted((await self._store.read(ERRORS_KEY)).items()):
            job, _, kind = name.partition(SEPARATOR)
            errors.add_metric([job, kind], value)
        stored = await self._store.read(GENERATION_KEY)
        buckets, cumulative = [], 0.0
        for bound in (*GENERATION_BUCKETS, float("inf")):
            cumulative += stored.get(_le(bound), 0.0)
            buckets.append((_le(bound), cumulative))
        latency = HistogramMetricFamily(
            "aisha_generation_duration_seconds",
            "From the user's confirmation to the images delivered, for generations that succeeded.",
            buckets=buckets,
            sum_value=stored.get("sum", 0.0),
        )
        return [errors, latency]

    async def aclose(self) -> None:
        await self._store.aclose()


def create_job_metrics(redis_url: str | None) -> JobMetrics:
    if not redis_url:
        return JobMetrics(MemoryFigures())
    from redis.asyncio import Redis

    return JobMetrics(RedisFigures(Redis.from_url(redis_url)))
