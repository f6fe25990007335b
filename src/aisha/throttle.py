"""Per-user rate limits: a fixed window of `rate` updates per `period` seconds.

The rule and the in-memory counter live here; the counter in Redis (every process counting
together, when REDIS_URL is set) is `providers/redis_throttle.py`. The bot's middleware asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from aisha.clock import Clock


class Verdict(StrEnum):
    ALLOW = "allow"
    WARN = "warn"  # the first update over the limit in this window: tell the user once
    DROP = "drop"  # later ones: ignore silently


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    retry_after: int  # seconds until the window ends


def decide(count: int, rate: int, retry_after: int) -> Decision:
    if count <= rate:
        return Decision(Verdict.ALLOW, retry_after)
    return Decision(Verdict.WARN if count == rate + 1 else Verdict.DROP, retry_after)


def current_window(clock: Clock, period: int) -> tuple[int, int]:
    """The number of the window `clock` is in, and the seconds until it ends (at least 1)."""
    now = clock.now().timestamp()
    window = int(now // period)
    return window, max(1, int((window + 1) * period - now + 0.999))


class Throttle(Protocol):
    async def hit(self, *, user_id: int) -> Decision: ...

    async def aclose(self) -> None: ...


class MemoryThrottle:
    def __init__(self, *, rate: int, period: int, clock: Clock) -> None:
        self._rate, self._period, self._clock = rate, period, clock
        self._counts: dict[int, tuple[int, int]] = {}  # user -> (window, count)

    async def hit(self, *, user_id: int) -> Decision:
        window, retry_after = current_window(self._clock, self._period)
        current, count = self._counts.get(user_id, (window, 0))
        count = count + 1 if current == window else 1
        self._counts[user_id] = (window, count)
        if len(self._counts) > 10_000:  # forget windows that are over
            self._counts = {u: v for u, v in self._counts.items() if v[0] == window}
        return decide(count, self._rate, retry_after)

    async def aclose(self) -> None:
        return None
