"""Prometheus metrics: counted in the process (updates, errors), read from the database at scrape
time (jobs by status, credits, provider cost) and from the shared job figures (job errors,
generation latency; see jobs/metrics.py), so every API process reports the same business figures
however many of them run, and nothing is lost on a restart.

Each `Metrics` has its own registry (not prometheus_client's global one): several runtimes in one
process, as in tests, must not clash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.models import Avatar, AvatarStatus
from aisha.billing.models import AnonymizedLedgerTotal, CreditEntry, CreditHold, EntryKind, HoldStatus
from aisha.db.base import JobStatus
from aisha.generation.models import ImageGeneration
from aisha.jobs.metrics import JobMetrics
from aisha.transcription.models import Transcript

MICRO = 1_000_000
# Webhook handling is dominated by database round trips: from a few ms to a slow provider call.
UPDATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Outcome(StrEnum):
    HANDLED = "handled"
    UNHANDLED = "unhandled"  # no handler took it
    DUPLICATE = "duplicate"  # already handled (a re-delivery): dropped
    ERROR = "error"


class Metrics:
    """The in-process instruments and the rendering of one scrape."""

    def __init__(self, jobs: JobMetrics | None = None) -> None:
        self.jobs = jobs or JobMetrics()  # shared with the job queue, the sweep and the services
        self.registry = CollectorRegistry()
        self.updates = Counter(
            "aisha_updates",
            "Telegram updates handled, by update type and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.update_seconds = Histogram(
            "aisha_update_duration_seconds",
            "Time to handle one Telegram update, by update type.",
            ["type"],
            buckets=UPDATE_BUCKETS,
            registry=self.registry,
        )
        self._update_children: dict[tuple[str, Outcome], tuple[Any, Any]] = {}
        self.errors = Counter(
            "aisha_errors",
            "Exceptions raised while handling updates, by exception class.",
            ["kind"],
            registry=self.registry,
        )

    def observe_update(self, update_type: str, outcome: Outcome, seconds: float) -> None:
        # The labelled children kept: `labels()` checks and locks on every call, and this runs
        # on every update (a handful of update types and outcomes).
        key = (update_type, outcome)
        children = self._update_children.get(key)
        if children is None:
            children = (
                self.updates.labels(type=update_type, outcome=outcome.value),
                self.update_seconds.labels(type=update_type),
            )
            self._update_children[key] = children
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def count_error(self, exc: BaseException) -> None:
        # The class name only: a message could carry user text or a URL with a key in it.
        self.errors.labels(kind=type(exc).__name__).inc()

    async def render(self, sessions: async_sessionmaker[AsyncSession]) -> bytes:
        """The text exposition: this process's counters, then the database's and the jobs' figures."""
        snapshot = await read_snapshot(sessions)
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(_SnapshotCollector(snapshot, await self.jobs.families()))
        # Two registries, disjoint names: the concatenation is one valid exposition.
        return generate_latest(self.registry) + generate_latest(scrape)


@dataclass
class Snapshot:
    avatars: dict[str, int] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    transcripts: dict[str, int] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)
    credits_on_hold: int = 0
    provider_cost_micro_usd: dict[str, int] = field(default_factory=dict)
    transcribed_ms: int = 0


async def read_snapshot(sessions: async_sessionmaker[AsyncSession]) -> Snapshot:
    """Six small aggregate queries in one read-only session; the job tables have (status, ...)
    indexes, and the ledger's sums are one pass over its entries."""
    snap = Snapshot()
    async with sessions() as session:
        avatars = await _by_status(session, Avatar, Avatar.provider_cost_micro_usd)
        snap.avatars = {s.value: 0 for s in AvatarStatus} | {k: v[0] for k, v in avatars.items()}
        generations = await _by_status(session, ImageGeneration, ImageGeneration.provider_cost_micro_usd)
        snap.generations = {s.value: 0 for s in JobStatus} | {k: v[0] for k, v in generations.items()}
        transcripts = await _by_status(
            session, Transcript, Transcript.provider_cost_micro_usd, Transcript.duration_ms
        )
        snap.transcripts = {s.value: 0 for s in JobStatus} | {k: v[0] for k, v in transcripts.items()}
        # What providers charged us for the work that was delivered.
        snap.provider_cost_micro_usd = {
            "avatars": avatars.get(AvatarStatus.READY.value, (0, 0))[1],
            "generation": generations.get(JobStatus.SUCCEEDED.value, (0, 0))[1],
            "transcription": transcripts.get(JobStatus.SUCCEEDED.value, (0, 0, 0))[1],
        }
        snap.transcribed_ms = transcripts.get(JobStatus.SUCCEEDED.value, (0, 0, 0))[2]

        sums: dict[str, int] = {}
        entries = select(CreditEntry.kind, func.coalesce(func.sum(CreditEntry.amount), 0)).group_by(
            CreditEntry.kind
        )
        # Deleted users' entries survive only as anonymized per-kind totals: count them too, so
        # the totals don't shrink when someone uses /delete_me.
        anonymized = select(AnonymizedLedgerTotal.kind, AnonymizedLedgerTotal.amount)
        for statement in (entries, anonymized):
            for kind, amount in await session.execute(statement):
                sums[str(kind)] = sums.get(str(kind), 0) + int(amount)
        on_hold = await session.scalar(
            select(func.coalesce(func.sum(CreditHold.amount), 0)).where(
                CreditHold.status == HoldStatus.ACTIVE
            )
        )
    snap.credits_on_hold = int(on_hold or 0)
    snap.credits = _credit_totals(sums, snap.credits_on_hold)
    return snap


def _credit_totals(sums: dict[str, int], on_hold: int) -> dict[str, int]:
    """Ledger sums by entry kind → what an operator reads.

    A hold entry takes the whole amount (negative); its resolution gives back what wasn't spent:
    a capture entry the remainder, a release (or expiry) entry all of it. So every credit ever
    held is captured, given back, or still on hold: held = captured + released + on_hold.
    """

    def total(kind: EntryKind) -> int:
        return sums.get(kind.value, 0)

    held = -total(EntryKind.HOLD)
    released = total(EntryKind.RELEASE) + total(EntryKind.CAPTURE)
    return {
        "topped_up": total(EntryKind.TOPUP),
        "held": held,
        "captured": max(held - released - on_hold, 0),
        "released": released,
        "charged": -total(EntryKind.CHARGE),
    }


async def _by_status(session: AsyncSession, model: Any, *sums: Any) -> dict[str, tuple[int, ...]]:
    """status → (row count, sum of each column in `sums`)."""
    columns = [func.count(), *(func.coalesce(func.sum(c), 0) for c in sums)]
    rows = await session.execute(select(model.status, *columns).group_by(model.status))
    return {str(status): tuple(int(v) for v in values) for status, *values in rows}


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot, extra: list[Metric]) -> None:
        self._snapshot = snapshot
        self._extra = extra

    def collect(self) -> Iterable[Metric]:
        return [*self._families(), *self._extra]

    def _families(self) -> Iterator[Metric]:
        snap = self._snapshot
        for name, what, counts in (
            ("aisha_avatars", "Avatars by status.", snap.avatars),
            ("aisha_generations", "Image generations by status.", snap.generations),
            ("aisha_transcripts", "Transcripts by status.", snap.transcripts),
        ):
            gauge = GaugeMetricFamily(name, what, labels=["status"])
            for status, value in sorted(counts.items()):
                gauge.add_metric([status], value)
            yield gauge
        credits = CounterMetricFamily(
            "aisha_credits",
            "Credits topped up, held, captured, released (given back) and charged, since the start.",
            labels=["kind"],
        )
        for kind, value in snap.credits.items():
            credits.add_metric([kind], value)
        yield credits
        yield GaugeMetricFamily(
            "aisha_credits_on_hold", "Credits held by jobs now.", value=snap.credits_on_hold
        )
        cost = CounterMetricFamily(
            "aisha_provider_cost_usd",
            "What providers charged for delivered work (ready avatars, succeeded jobs), by feature.",
            labels=["feature"],
        )
        for feature, micro in snap.provider_cost_micro_usd.items():
            cost.add_metric([feature], micro / MICRO)
        yield cost
        yield CounterMetricFamily(
            "aisha_transcription_minutes",
            "Minutes of audio in delivered transcripts.",
            value=snap.transcribed_ms / 60_000,
        )
