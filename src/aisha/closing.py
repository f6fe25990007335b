"""`async with` for the objects that hold connections or run servers, written once."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """Entering the block gives the object; leaving it calls `aclose()` (its connections go)."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class Started(Closing):
    """Entering the block calls `start()`, leaving it `stop()` (a server on a port)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self
