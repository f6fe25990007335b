"""Webhook throughput: updates per second and p50/p99 latency for /start and /balance, next to a bare
aiogram handler that only answers, both fed the same way in the same run.

    python bench/updates.py [--database-url URL] [--seconds N] [--clients N] [--users N]

Creates a temporary PostgreSQL database on the server of URL (default the local server), migrates
it, and starts, in this process, the project's fake Telegram Bot API and two webhook apps on
aiohttp.web, each answering by a real `sendMessage` to the fake over HTTP:

- **aisha**: a real `Runtime` (webhook mode, PostgreSQL): the secret check, the exactly-once guard,
  the user's registration or refresh, the ledger read for /balance, FSM, locale texts, metrics;
- **baseline**: a bare aiogram Dispatcher with one handler that only answers (no database, no
  middlewares) behind aiogram's plain webhook shape on the same server (`POST /telegram/webhook`,
  the same secret header check, `Update` parsing).

A second process posts the updates with httpx (N concurrent clients, one request in flight each, a
pool of pre-registered users so /start is a returning user's), so the load generator doesn't take
the servers' CPU. Phases alternate baseline/aisha so drifting machine load hits both alike; each
has a 2 s warm-up that is not counted. Last, each app gets updates at a fixed 50 a second (open
loop, /start and /balance alternating) for the latency under an ordinary load. The database is
dropped at the end.

Telegram's outgoing limits (30 messages/s, 1/s per chat) and the per-user throttle are turned off
for aisha: with them on, the figure is simply Telegram's cap of 30 answers a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiogram import Bot, Dispatcher, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message, Update
from aiohttp import web
from sqlalchemy import text

from aisha.config import Settings, load_settings
from aisha.db.migrate import upgrade
from aisha.db.session import execute_autocommit
from aisha.logs import configure_logging
from aisha.runtime import Role, Runtime
from aisha.sandbox import FakeTelegramServer

DEFAULT_URL = os.environ.get("DATABASE_TEST_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
SECRET = "bench-webhook-secret-0123456789"
WARMUP_SECONDS = 2.0
COMMANDS = ("/start", "/balance")
FIRST_USER = 10_000_000
FIXED_RATE = 50.0  # updates per second in the fixed-rate phase
AT_RATE = "at 50/s"


@dataclass
class Result:
    requests: int
    failures: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------- load (child)


def _update(update_id: int, user_id: int, command: str) -> dict[str, Any]:
    person = {"id": user_id, "is_bot": False, "first_name": f"U{user_id}", "language_code": "en"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": {"id": user_id, "type": "private", "first_name": person["first_name"]},
            "from": person,
            "text": command,
            "entities": [{"type": "bot_command", "offset": 0, "length": len(command)}],
        },
    }


def _load(
    url: str, command: str, seconds: float, clients: int, users: int, first_id: int, *, once: bool = False
) -> Result:
    """Runs in the child process: `clients` loops posting updates for `seconds`, or (`once`) one
    update for each user."""

    async def run() -> Result:
        latencies: list[float] = []
        failures = 0
        sent = 0
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker(until: float) -> None:
                nonlocal failures, sent
                while (sent < users) if once else (time.perf_counter() < until):
                    n, sent = sent, sent + 1
                    user = FIRST_USER + n % users
                    started = time.perf_counter()
                    response = await client.post(
                        url,
                        json=_update(first_id + n, user, command),
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                    )
                    latencies.append(time.perf_counter() - started)
                    failures += response.status_code != 200

            started = time.perf_counter()
            await asyncio.gather(*(worker(started + seconds) for _ in range(clients)))
            return Result(len(latencies), failures, time.perf_counter() - started, latencies)

    return asyncio.run(run())


def _load_at_rate(url: str, rate: float, seconds: float, users: int, first_id: int) -> Result:
    """Runs in the child process: updates sent at a fixed `rate` per second (open loop: each at its
    time, whether or not the earlier ones were answered), /start and /balance alternating."""

    async def run() -> Result:
        latencies: list[float] = []
        failures = 0
        # A server that falls behind piles up requests: at most this many connections, the rest
        # wait in the client (their wait counted in their latency).
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:

            async def send(n: int, at: float) -> None:
                nonlocal failures
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                started = time.perf_counter()
                try:
                    response = await client.post(
                        url,
                        json=_update(first_id + n, FIRST_USER + n % users, COMMANDS[n % len(COMMANDS)]),
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                    )
                    failures += response.status_code != 200
                except httpx.HTTPError:
                    failures += 1
                latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            count = int(rate * seconds)
            await asyncio.gather(*(send(n, started + n / rate) for n in range(count)))
            return Result(len(latencies), failures, time.perf_counter() - started, latencies)

    return asyncio.run(run())


# -------------------------------------------------------------------------------- servers (parent)


def _baseline_app(bot: Bot) -> web.Application:
    dispatcher = Dispatcher()
    router = Router()

    @router.message()
    async def answer(message: Message) -> None:
        await message.answer("ok")

    dispatcher.include_router(router)

    async def webhook(request: web.Request) -> web.Response:
        if request.headers.get("X-Telegram-Bot-Api-Secret-Token") != SECRET:
            return web.json_response({"detail": "bad secret token"}, status=401)
        update = Update.model_validate(await request.json(), context={"bot": bot})
        await dispatcher.feed_update(bot, update)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/telegram/webhook", webhook)
    return app


@contextlib.asynccontextmanager
async def _serve(app: web.Application, port: int) -> AsyncIterator[None]:
    """Served as aisha's own app is (aisha.api.server): no access log, no signal handlers."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
    finally:
        await runner.cleanup()


def _settings(telegram: FakeTelegramServer, database_url: str, files: Path) -> Settings:
    values: dict[str, Any] = {
        "bot_token": telegram.token,
        "telegram_api_url": telegram.base_url,
        "database_url": database_url,
        "storage_url": f"file://{files}",
        "public_base_url": "https://bench.example.com",
        "webhook_secret": SECRET,
        "http_port": _free_port(),
        "recovery_interval_seconds": 3600,
    }
    # Off: the per-user throttle, and Telegram's outgoing limits (30 messages/s overall, 1/s per
    # chat), which would cap the bot at 30 updates/s and measure only the limiter. 0 turns each off.
    for name in ("throttle_rate", "telegram_messages_per_second", "telegram_private_chat_per_second"):
        if name in Settings.model_fields:
            values[name] = 0
    return load_settings(**values)


async def _run(database_url: str, *, seconds: float, clients: int, users: int) -> None:
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    phase_ids = iter(range(1, 1000))

    async def measure(url: str, command: str) -> Result:
        for duration in (WARMUP_SECONDS, seconds):
            first_id = next(phase_ids) * 100_000_000
            result = await loop.run_in_executor(pool, _load, url, command, duration, clients, users, first_id)
        return result

    async def measure_at_rate(url: str) -> Result:
        for duration in (WARMUP_SECONDS, seconds):
            first_id = next(phase_ids) * 100_000_000
            result = await loop.run_in_executor(
                pool, _load_at_rate, url, FIXED_RATE, duration, users, first_id
            )
        return result

    with tempfile.TemporaryDirectory() as directory:
        async with FakeTelegramServer() as telegram:
            # As in production (JSON, secrets masked), but warnings only: the output stays readable.
            configure_logging(secrets=[telegram.token, SECRET], level="WARNING")
            runtime = Runtime(_settings(telegram, database_url, Path(directory)))
            await runtime.start(Role.ALL)
            bare_bot = Bot(
                token=telegram.token,
                session=AiohttpSession(api=TelegramAPIServer.from_base(telegram.base_url)),
            )
            baseline_port = _free_port()
            try:
                async with _serve(_baseline_app(bare_bot), baseline_port):
                    aisha_url = f"http://127.0.0.1:{runtime.http_port}/telegram/webhook"
                    baseline_url = f"http://127.0.0.1:{baseline_port}/telegram/webhook"
                    # Register the user pool first: the measured /start is a returning user's.
                    register = functools.partial(_load, once=True)
                    await loop.run_in_executor(pool, register, aisha_url, "/start", 0, clients, users, 1)
                    results: dict[tuple[str, str], Result] = {}
                    for command in COMMANDS:
                        for name, url in (("baseline", baseline_url), ("aisha", aisha_url)):
                            results[(command, name)] = await measure(url, command)
                            telegram.clear_calls()  # the fake remembers every call: keep it small
                    for name, url in (("baseline", baseline_url), ("aisha", aisha_url)):
                        results[(AT_RATE, name)] = await measure_at_rate(url)
                        telegram.clear_calls()
                    registered = await _count_users(runtime)
            finally:
                await bare_bot.session.close()
                await runtime.stop()
                pool.shutdown()
    _print(results, seconds=seconds, clients=clients, users=registered)


async def _count_users(runtime: Runtime) -> int:
    async with runtime.services.sessions() as session:
        return int((await session.execute(text("SELECT count(*) FROM users"))).scalar_one())


def _print(results: dict[tuple[str, str], Result], *, seconds: float, clients: int, users: int) -> None:
    print(
        f"\nPOST /telegram/webhook on PostgreSQL, {clients} concurrent clients, {seconds:g} s per phase, "
        f"{users} users; each update answered by sendMessage to the fake Bot API"
    )
    head = f"{'':10}{'':10}{'updates/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
    print(head)
    for command in COMMANDS:
        for name in ("baseline", "aisha"):
            r = results[(command, name)]
            print(
                f"{command:10}{name:10}{r.rate:>11,.0f}{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}"
                f"{r.failures:>8}"
            )
        base, ours = results[(command, "baseline")], results[(command, "aisha")]
        print(
            f"{command:10}{'ratio':10}{ours.rate / base.rate:>11.2f}"
            f"{ours.percentile(50) / base.percentile(50):>9.2f}{ours.percentile(99) / base.percentile(99):>9.2f}"
            "   (aisha / baseline)"
        )
    print(f"at a fixed {FIXED_RATE:g} updates/s (/start and /balance alternating):")
    for name in ("baseline", "aisha"):
        r = results[(AT_RATE, name)]
        print(
            f"{'':10}{name:10}{r.rate:>11,.0f}{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}{r.failures:>8}"
        )
    figures = {
        "start_ratio": results[("/start", "aisha")].rate / results[("/start", "baseline")].rate,
        "balance_ratio": results[("/balance", "aisha")].rate / results[("/balance", "baseline")].rate,
        "p99_ms_at_50": results[(AT_RATE, "aisha")].percentile(99),
        "baseline_p99_ms_at_50": results[(AT_RATE, "baseline")].percentile(99),
    }
    # Last line: one JSON object, to compare runs.
    print(json.dumps({name: round(value, 3) for name, value in figures.items()}))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=DEFAULT_URL, help="PostgreSQL server (admin) URL")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase (default 10)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--users", type=int, default=500, help="distinct Telegram users (default 500)")
    args = parser.parse_args()

    admin_url = args.database_url
    name = f"aisha_bench_{uuid.uuid4().hex[:10]}"
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    asyncio.run(execute_autocommit(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)  # before any event loop of ours: Alembic's env runs its own
        asyncio.run(_run(url, seconds=args.seconds, clients=args.clients, users=args.users))
    finally:
        asyncio.run(execute_autocommit(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
