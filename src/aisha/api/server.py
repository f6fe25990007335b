"""The HTTP server the runtime starts: aiohttp's (aiogram already runs on aiohttp), with no signal
handlers and no access log of its own: the runtime decides when to stop, and logs.py what is logged."""

from __future__ import annotations

from aiohttp import web

from aisha.api.app import create_api
from aisha.api.deps import AppContext


class HttpServer:
    def __init__(self, runtime: AppContext, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(create_api(runtime), handle_signals=False, access_log=None)
        self._host, self._port = host, port

    async def start(self) -> None:
        """Listening when this returns; an address already taken raises OSError."""
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except BaseException:
            await self._runner.cleanup()
            raise

    @property
    def port(self) -> int:
        """The bound port (useful with HTTP_PORT=0 in tests)."""
        addresses = self._runner.addresses
        assert addresses, "the server is not listening"
        return int(addresses[0][1])

    async def stop(self) -> None:
        """Stops listening, lets the requests in flight finish, then closes every connection."""
        await self._runner.cleanup()
