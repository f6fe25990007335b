"""Fault injection shared by the fake servers: the n-th matching call from now fails.

A test names a call (a Bot API method, a FAL path fragment, an OpenAI endpoint) and how it
fails: an HTTP error the real service sends, a request that hangs until the client gives up, or
a connection closed with no answer. Each fake asks its plan on every call and fails the call
the plan picks; the fake's own rules (refusals, limits) apply to every other call as usual.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from aiohttp import web

# A hung request stays open at most this long (the client gives up long before).
HANG_LIMIT_SECONDS = 600.0


class Fault(StrEnum):
    FORBIDDEN = "forbidden"  # 403: for Telegram, "bot was blocked by the user"
    RATE_LIMITED = "rate_limited"  # 429
    SERVER_ERROR = "server_error"  # 500
    TIMEOUT = "timeout"  # no answer until the client gives up
    RESET = "reset"  # the connection is closed with no answer

    @property
    def status(self) -> int | None:
        """The HTTP status this fault answers with; None for the faults that never answer."""
        return _STATUS.get(self)


_STATUS = {Fault.FORBIDDEN: 403, Fault.RATE_LIMITED: 429, Fault.SERVER_ERROR: 500}


@dataclass
class _Planned:
    key: str
    fault: Fault
    countdown: int  # matching calls still to let through, plus one


class FaultPlan:
    """Which upcoming calls fail: a call named `name` counts for a fault planned under `key` when
    they are equal (Bot API methods) or, `by_fragment`, when `key` is part of it (paths)."""

    # (service, planned key, fault) of every fault served in this process: the test suite reports
    # how many distinct fault points it drove.
    served: ClassVar[list[tuple[str, str, Fault]]] = []

    def __init__(self, service: str, *, by_fragment: bool = False) -> None:
        self._service = service
        self._planned: list[_Planned] = []
        self._by_fragment = by_fragment
        self.injected: list[tuple[str, Fault]] = []  # (call name, fault) of every fault served

    def add(self, key: str, fault: Fault, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n counts from 1: the next matching call")
        self._planned.append(_Planned(key.lower(), Fault(fault), n))

    def clear(self) -> None:
        self._planned.clear()

    def take(self, name: str) -> Fault | None:
        """Count this call against every plan it matches; the fault of the first one due."""
        name = name.lower()
        due: _Planned | None = None
        for planned in self._planned:
            if not self._matches(planned.key, name):
                continue
            planned.countdown -= 1
            if planned.countdown == 0 and due is None:
                due = planned
        self._planned = [p for p in self._planned if p.countdown > 0]
        if due is not None:
            self.injected.append((name, due.fault))
            FaultPlan.served.append((self._service, due.key, due.fault))
            return due.fault
        return None

    def _matches(self, key: str, name: str) -> bool:
        return key in name if self._by_fragment else key == name


async def never_answer(request: web.Request, fault: Fault) -> web.StreamResponse:
    """TIMEOUT: hold the request until the client goes away. RESET: drop the connection."""
    transport = request.transport
    if fault is Fault.RESET:
        if transport is not None:
            transport.abort()
        return web.Response(status=500)  # never reaches the client: the connection is gone
    deadline = time.monotonic() + HANG_LIMIT_SECONDS
    # A closing transport sets no event to wait on: look at it every 50 ms.
    while transport is not None and not transport.is_closing() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return web.Response(status=504)
