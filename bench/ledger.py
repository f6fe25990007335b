"""Ledger throughput: hold+capture pairs per second, next to raw single-row UPDATEs.

    python bench/ledger.py [--database-url URL] [--seconds N] [--workers N]

Creates a temporary database on the PostgreSQL server of URL (default the local server),
migrates it, runs four timed phases with N concurrent workers and drops it at the end:

- baseline, one hot account: `UPDATE credit_accounts SET balance = balance - 1 WHERE user_id = :u`,
  one statement per transaction, every worker on the same row;
- ledger, one hot account: `hold` then `capture` in one transaction (like a real job);
- the same two on MANY accounts (one per worker).

A sqlite URL benchmarks a temporary SQLite file instead. Figures are transactions per second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.billing import LedgerService
from aisha.clock import SystemClock
from aisha.db.migrate import upgrade
from aisha.db.session import create_engine, create_session_factory, execute_autocommit, unit_of_work
from aisha.users.models import User

DEFAULT_URL = os.environ.get("DATABASE_TEST_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
HOT_USER = 1
FUNDS = 10**15
WARMUP_SECONDS = 1.0

Work = Callable[[AsyncSession, int, int], Awaitable[None]]
counter = itertools.count()  # unique idempotency keys across every phase of the run


def _in_thread(function: Callable[[], None]) -> None:
    # Alembic's env runs its own event loop: keep it off ours.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(function).result()


async def _setup(sessions: async_sessionmaker[AsyncSession], ledger: LedgerService, users: list[int]) -> None:
    async with unit_of_work(sessions) as session:
        session.add_all(User(telegram_id=u, language="en") for u in users)
        await session.flush()
        for user in users:
            await ledger.credit(session=session, user_id=user, amount=FUNDS, key=f"bench:fund:{user}")


async def _phase(
    sessions: async_sessionmaker[AsyncSession],
    work: Work,
    *,
    workers: int,
    seconds: float,
    account: Callable[[int], int],
) -> float:
    """Run `work` in a loop on `workers` tasks, one transaction each; transactions per second."""

    async def worker(n: int, until: float, tally: list[int]) -> None:
        while time.perf_counter() < until:
            async with unit_of_work(sessions) as session:
                await work(session, account(n), next(counter))
            tally[n] += 1

    for duration, counted in ((WARMUP_SECONDS, False), (seconds, True)):
        tally = [0] * workers
        started = time.perf_counter()
        await asyncio.gather(*(worker(n, started + duration, tally) for n in range(workers)))
        elapsed = time.perf_counter() - started
        if counted:
            return sum(tally) / elapsed
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(url: str, *, seconds: float, workers: int) -> None:
    engine = create_engine(url, pool_size=workers + 2)
    sessions = create_session_factory(engine)
    ledger = LedgerService(clock=SystemClock(), hold_ttl=timedelta(hours=1))
    # The baseline writes balances behind the ledger's back: it gets accounts of its own, so the
    # ledger's accounts can still be verified at the end.
    ledger_hot, ledger_many = HOT_USER, [1000 + n for n in range(workers)]
    raw_hot, raw_many = HOT_USER + 1, [2000 + n for n in range(workers)]
    try:
        await _setup(sessions, ledger, [ledger_hot, *ledger_many, raw_hot, *raw_many])
        run = uuid.uuid4().hex[:8]

        async def raw_update(session: AsyncSession, user_id: int, _: int) -> None:
            await session.execute(
                text("UPDATE credit_accounts SET balance = balance - 1 WHERE user_id = :u"), {"u": user_id}
            )

        async def hold_capture(session: AsyncSession, user_id: int, n: int) -> None:
            held = await ledger.hold(
                session=session, user_id=user_id, amount=5, key=f"b{run}:{n}:hold", reference=f"bench:{n}"
            )
            await ledger.capture(session=session, hold_id=held.hold_id, amount=3, key=f"b{run}:{n}:capture")

        phases: list[tuple[str, str, Work, Callable[[int], int]]] = [
            ("one hot account", "baseline", raw_update, lambda _: raw_hot),
            ("one hot account", "ledger", hold_capture, lambda _: ledger_hot),
            ("many accounts", "baseline", raw_update, lambda n: raw_many[n]),
            ("many accounts", "ledger", hold_capture, lambda n: ledger_many[n]),
        ]
        results: dict[tuple[str, str], float] = {}
        # Interleaved, so drifting machine load hits both sides alike.
        for accounts, name, work, pick in phases:
            results[(accounts, name)] = await _phase(
                sessions, work, workers=workers, seconds=seconds, account=pick
            )

        print(f"\n{engine.dialect.name}, {workers} concurrent workers, {seconds:g} s per phase")
        print(f"{'':18}{'baseline UPDATE/s':>20}{'ledger hold+capture/s':>24}{'ledger/baseline':>18}")
        for accounts in ("one hot account", "many accounts"):
            base, ours = results[(accounts, "baseline")], results[(accounts, "ledger")]
            print(f"{accounts:18}{base:>20,.0f}{ours:>24,.0f}{ours / base:>18.2f}")
        print(
            "(a ledger transaction = hold + capture: on PostgreSQL BEGIN, one statement each, COMMIT,\n"
            " against BEGIN, UPDATE, COMMIT for the baseline; on one account the row lock is held from\n"
            " the hold's statement until COMMIT)"
        )

        async with unit_of_work(sessions) as session:
            problems = await ledger.verify_all(session=session)
            entries = (await session.execute(text("SELECT count(*) FROM credit_entries"))).scalar_one()
        raw = {raw_hot, *raw_many}
        ledger_problems = [p for p in problems if p.user_id not in raw]
        print(
            f"verify_all after {entries:,} entries: ledger accounts "
            f"{'clean' if not ledger_problems else ledger_problems[:3]}; "
            f"{len(problems) - len(ledger_problems)} raw-UPDATE baseline accounts flagged (expected)"
        )
        ratios = {
            "hot_ratio": results[("one hot account", "ledger")] / results[("one hot account", "baseline")],
            "many_ratio": results[("many accounts", "ledger")] / results[("many accounts", "baseline")],
        }
        # Last line: one JSON object, to compare runs.
        print(json.dumps({name: round(value, 3) for name, value in ratios.items()}))
    finally:
        await engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", default=DEFAULT_URL, help="PostgreSQL server (admin) URL, or sqlite"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase (default 5)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent workers (default 16)")
    args = parser.parse_args()

    if args.database_url.startswith("sqlite"):
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
            upgrade(url)
            asyncio.run(_run(url, seconds=args.seconds, workers=args.workers))
        return 0

    admin_url = args.database_url
    name = f"aisha_bench_{uuid.uuid4().hex[:10]}"
    url = urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    asyncio.run(execute_autocommit(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        _in_thread(lambda: upgrade(url))
        asyncio.run(_run(url, seconds=args.seconds, workers=args.workers))
    finally:
        asyncio.run(execute_autocommit(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
