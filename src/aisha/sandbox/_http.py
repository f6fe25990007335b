"""What every fake server shares: an aiohttp app on a loopback port, used with `async with`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aisha.closing import Started


class LoopbackServer(Started):
    def __init__(self, *, host: str, port: int) -> None:
        self._host = host
        self._port = port  # 0 picks a free one
        self._runner: web.AppRunner | None = None
        self._root: str | None = None

    async def _listen(self, app: web.Application, **runner_options: Any) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        # No access log: request paths and headers carry tokens and keys.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, **runner_options)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._root = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _root_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._root is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._root
