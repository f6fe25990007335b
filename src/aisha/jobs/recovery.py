"""A periodic sweep that each feature registers its stuck-job checks into.

Lost webhooks, crashes and restarts leave rows in a non-terminal status and holds unresolved;
each check finds such rows and drives them on. Checks are idempotent, so two processes sweeping
at once do no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from aisha.jobs.metrics import JobMetrics

Check = Callable[[], Awaitable[int]]
log = structlog.get_logger(__name__)


class RecoverySweep:
    def __init__(self, *, metrics: JobMetrics | None = None) -> None:
        self._checks: dict[str, Check] = {}
        self._metrics = metrics or JobMetrics()
        self.runs = 0  # sweeps completed by this process (tests wait for the one at startup)

    def register(self, name: str, check: Check) -> None:
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    async def run_once(self) -> dict[str, int]:
        """Run every check; one failing check doesn't stop the others. Returns rows handled."""
        handled: dict[str, int] = {}
        for name, check in self._checks.items():
            try:
                handled[name] = await check()
            except Exception as exc:
                log.exception("recovery.check_failed", check=name)
                await self._metrics.job_failed(f"recovery.{name}", type(exc).__name__)
                handled[name] = 0
            if handled[name]:
                log.info("recovery.handled", check=name, count=handled[name])
        self.runs += 1
        return handled

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
