"""The `aisha` command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import typer

from aisha.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="Aisha: a Telegram bot for AI avatars, images and transcription.", no_args_is_help=True
)
T = TypeVar("T")


def _fail(message: str) -> None:
    typer.echo(f"aisha: {message}", err=True)
    raise typer.Exit(2)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable, for the type checker


def _secrets(settings: Settings) -> list[str]:
    values = [settings.bot_token, settings.webhook_secret, settings.fal_key, settings.openai_api_key]
    values.append(settings.s3_secret_key)
    return [v.get_secret_value() for v in values if v is not None]


def _guarded(action: Callable[[], T]) -> T:
    """Configuration errors found while starting become one line and exit code 2."""
    try:
        return action()
    except ConfigError as exc:
        _fail(str(exc))
        raise


def _serve(role_name: str) -> None:
    from aisha.db.migrate import upgrade
    from aisha.logs import configure_logging
    from aisha.runtime import Role, Runtime

    settings = _settings()
    _guarded(settings.require_bot_token)
    configure_logging(secrets=_secrets(settings))
    role = Role(role_name)
    if role is Role.ALL:
        # One process on the embedded defaults needs no other setup: bring the schema up to date.
        upgrade(settings.database_url)

    async def main() -> None:
        runtime = Runtime(settings)
        await runtime.run_until_signal(role)

    _guarded(lambda: asyncio.run(main()))


@app.command()
def run() -> None:
    """Run everything in one process: the bot (polling, or webhook with PUBLIC_BASE_URL), the HTTP
    app and the background jobs. Migrates the database first."""
    _serve("all")


@app.command()
def api() -> None:
    """Run an HTTP process taking webhooks (needs PUBLIC_BASE_URL); jobs go to workers via Redis."""
    _serve("api")


@app.command()
def worker() -> None:
    """Run a worker process: queued jobs from Redis and the recovery sweep (needs REDIS_URL)."""
    _serve("worker")


@app.command()
def migrate(revision: str = typer.Argument("head", help="Alembic revision to upgrade to")) -> None:
    """Create or upgrade the database schema."""
    from aisha.db.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"database is at revision {revision}")


ledger_app = typer.Typer(help="The credit ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("verify")
def ledger_verify() -> None:
    """Check that every account's balance equals the sum of its entries; exit 1 naming the
    accounts that don't."""
    from sqlalchemy import func, select

    from aisha.billing.models import CreditAccount
    from aisha.billing.service import AccountMismatch, LedgerService
    from aisha.clock import SystemClock
    from aisha.db.session import create_engine, create_session_factory

    settings = _settings()

    async def check() -> tuple[int, list[AccountMismatch]]:
        engine = create_engine(settings.database_url)
        try:
            ledger = LedgerService(clock=SystemClock(), hold_ttl=timedelta(seconds=settings.hold_ttl_seconds))
            async with create_session_factory(engine)() as session:
                accounts = int(await session.scalar(select(func.count()).select_from(CreditAccount)) or 0)
                return accounts, await ledger.verify_all(session=session)
        finally:
            await engine.dispose()

    accounts, mismatches = asyncio.run(check())
    for bad in mismatches:
        balance = "missing" if bad.balance is None else str(bad.balance)
        typer.echo(
            f"account {bad.user_id}: balance {balance}, entries sum {bad.entries_sum}"
            f" ({'; '.join(bad.reasons)})",
            err=True,
        )
    if mismatches:
        typer.echo(f"ledger verify: {len(mismatches)} of {accounts} accounts do not add up", err=True)
        raise typer.Exit(1)
    typer.echo(f"ledger verify: all {accounts} accounts add up")


@app.command()
def doctor() -> None:
    """Check every dependency (database, storage, Telegram, Redis, provider keys) and print a table;
    exit 1 when a required one is down."""
    from aisha.health import check_all
    from aisha.runtime import Runtime

    settings = _settings()
    _guarded(settings.require_bot_token)

    async def run_checks() -> list[Any]:
        runtime = Runtime(settings)
        try:
            return await check_all(runtime.services, runtime.bot)
        finally:
            await runtime.bot.session.close()
            await runtime.services.aclose()

    results = asyncio.run(run_checks())
    typer.echo(f"{'dependency':<10} {'status':<15} {'latency':>9}  detail")
    for r in results:
        latency = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-"
        status = r.status + ("" if r.required else " (optional)" if r.status != "ok" else "")
        typer.echo(f"{r.name:<10} {status:<15} {latency:>9}  {r.detail}".rstrip())
    if any(r.failing for r in results):
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    from aisha import __version__

    typer.echo(__version__)
