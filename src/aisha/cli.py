"""The `aisha` command."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import structlog
import typer

from aisha.config import ConfigError, Locale, Settings, load_settings

app = typer.Typer(
    help="Aisha: a Telegram bot for AI avatars, images and transcription.",
    no_args_is_help=True,
    # Locals would include the settings and the bot token; never print them, whatever the default.
    pretty_exceptions_show_locals=False,
)
T = TypeVar("T")
SANDBOX_DIR = Path("data/sandbox")


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
    values += [settings.s3_secret_key, settings.metrics_token]
    secrets = [v.get_secret_value() for v in values if v is not None]
    # Passwords inside the database and Redis URLs.
    for url in (settings.database_url, settings.redis_url or ""):
        with contextlib.suppress(ValueError):
            if password := urlsplit(url).password:
                secrets.append(unquote(password))
                secrets.append(password)
    return secrets


def _crashed(error: Exception, secrets: list[str]) -> NoReturn:
    """Start-up (or the run) failed on something that isn't configuration: one masked line on the
    terminal, the masked traceback in the log, and never a dump of locals holding the settings."""
    from aisha.logs import SecretMasker

    structlog.get_logger("aisha.cli").error("startup.failed", exc_info=error)
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    reason = SecretMasker(secrets).mask(f"{type(error).__name__}: {first_line}".rstrip(": "))
    typer.echo(f"aisha: could not start: {reason}", err=True)
    raise typer.Exit(1)


def _guarded(action: Callable[[], T]) -> T:
    """Configuration errors found while starting become one line and exit code 2."""
    try:
        return action()
    except ConfigError as exc:
        _fail(str(exc))
        raise


def _serve(role_name: str) -> None:
    # Importing the runtime builds some 400,000 objects that live as long as the process (aiogram's,
    # the ORM's, ours) and under 1 MB of garbage; the cyclic collector would walk them over and over
    # while they load (about a sixth of the CPU time to ready). So it is off while they load, then
    # they are frozen out of its reach, for good: later collections walk only what came after.
    gc.disable()
    try:
        from aisha.logs import configure_logging
        from aisha.runtime import Role, Runtime
    finally:
        gc.freeze()
        gc.enable()

    settings = _settings()
    _guarded(settings.require_bot_token)
    secrets = _secrets(settings)
    configure_logging(secrets=secrets)
    role = Role(role_name)

    async def main() -> None:
        runtime = Runtime(settings)
        await runtime.run_until_signal(role)

    def start() -> None:
        if role is Role.ALL:
            # One process on the embedded defaults needs no other setup: bring the schema up to date.
            # Alembic itself loads only when the schema is behind (or its version can't be read).
            from aisha.db.migrate import upgrade

            upgrade(settings.database_url)
        asyncio.run(main())

    try:
        _guarded(start)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as error:
        _crashed(error, secrets)


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
def sandbox(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port of the chat page")] = 8090,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the database, files and chat are kept")
    ] = SANDBOX_DIR,
    training_delay: Annotated[
        float, typer.Option("--training-delay", min=0, help="Seconds until an avatar's training completes")
    ] = 20.0,
    language: Annotated[Locale, typer.Option("--language", help="The simulated user's language")] = Locale.EN,
) -> None:
    """Run the whole bot with no keys, against built-in fakes of Telegram, FAL and OpenAI, and chat
    with it in the browser. Stops with Ctrl-C; start it again on the same --data-dir to carry on."""
    import signal

    from aisha.logs import configure_logging
    from aisha.sandbox.app import Sandbox, SandboxStartError

    configure_logging(level="WARNING", json=False)  # the terminal shows the URL, then only trouble

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        box = Sandbox(data_dir=data_dir, port=port, training_delay=training_delay, language=language.value)
        async with box:
            typer.echo(f"Aisha sandbox: open {box.url} (Ctrl-C stops it)")
            await stop.wait()

    try:
        _guarded(lambda: asyncio.run(main()))
    except SandboxStartError as exc:
        _fail(str(exc))


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
    """Check the books: balances against entries, each hold resolved once with matching amounts,
    each payment credited (and refunded) once; exit 1 naming what is wrong, a line each."""
    from sqlalchemy import func, select

    from aisha.billing.models import CreditAccount
    from aisha.billing.service import AccountMismatch
    from aisha.container import build_admin

    settings = _settings()

    async def check() -> tuple[int, list[AccountMismatch]]:
        tools = build_admin(settings)
        try:
            async with tools.sessions() as session:
                accounts = int(await session.scalar(select(func.count()).select_from(CreditAccount)) or 0)
                return accounts, await tools.ledger.verify_all(session=session)
        finally:
            await tools.aclose()

    accounts, mismatches = asyncio.run(check())
    for bad in mismatches:
        if bad.reasons:
            balance = "missing" if bad.balance is None else str(bad.balance)
            typer.echo(
                f"account {bad.user_id}: balance {balance}, entries sum {bad.entries_sum}"
                f" ({'; '.join(bad.reasons)})",
                err=True,
            )
        for problem in bad.problems:
            typer.echo(f"account {bad.user_id}: {problem}", err=True)
    if mismatches:
        typer.echo(f"ledger verify: {len(mismatches)} of {accounts} accounts do not add up", err=True)
        raise typer.Exit(1)
    typer.echo(f"ledger verify: all {accounts} accounts add up")


@app.command()
def doctor() -> None:
    """Check every dependency (database, storage, Telegram, Redis, provider keys) and print a table
    with the way FAL gets training archives; exit 1 when a required dependency is down."""
    from aisha.health import archive_check, check_all
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

    results = [*asyncio.run(run_checks()), archive_check(settings)]
    typer.echo(f"{'dependency':<10} {'status':<15} {'latency':>9}  detail")
    for r in results:
        latency = f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-"
        optional = not r.required and r.status not in ("ok", "warning")
        status = r.status + (" (optional)" if optional else "")
        typer.echo(f"{r.name:<10} {status:<15} {latency:>9}  {r.detail}".rstrip())
    if any(r.failing for r in results):
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    from aisha import __version__

    typer.echo(__version__)


admin_app = typer.Typer(
    help="Operating the bot: statistics, users, credits, blocking, broadcasts.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


def _admin_run(action: Callable[[Any, Any], Any]) -> Any:
    """Runs `action(admin_service, session)` in one unit of work on the configured database."""
    from aisha.container import build_admin
    from aisha.db.session import unit_of_work

    settings = _settings()

    async def main() -> Any:
        tools = build_admin(settings)
        try:
            async with unit_of_work(tools.sessions) as session:
                return await action(tools.admin, session)
        finally:
            await tools.aclose()

    return asyncio.run(main())


def _admin_fail_on(error: Exception) -> None:
    from aisha.admin.errors import AdminError
    from aisha.billing.errors import InsufficientCredits, InvalidAmount

    if isinstance(error, InsufficientCredits):
        _fail(f"refused: the balance is {error.balance}, less than {error.required}")
    if isinstance(error, InvalidAmount):
        _fail("the amount must be a whole number above zero")
    if isinstance(error, AdminError):
        _fail(type(error).__name__)
    raise error


@admin_app.command("stats")
def admin_stats() -> None:
    """Users, activity, top-ups, spend, and per feature: jobs, credits, provider cost and margin."""

    async def action(service: Any, session: Any) -> Any:
        return await service.stats(session=session)

    stats = _admin_run(action)
    typer.echo(f"users: {stats.users_total}")
    typer.echo(f"active today: {stats.active_today}")
    typer.echo(f"active this week: {stats.active_week}")
    typer.echo(f"blocked: {stats.blocked}")
    typer.echo(f"topped up: {stats.topups}")
    typer.echo(f"spent: {stats.spend}")
    if stats.refunds_waiting:
        typer.echo(f"refunds Telegram never answered, waiting for the operator: {stats.refunds_waiting}")
        for charge in stats.waiting_refund_charges:
            typer.echo(f"  /refund {charge}  (in the bot: asks Telegram again)")
    typer.echo(
        f"{'feature':<14} {'done':>6} {'running':>8} {'failed':>7} {'credits':>8} {'cost $':>9} {'margin $':>9}"
    )
    for f in stats.features:
        typer.echo(
            f"{f.name:<14} {f.succeeded:>6} {f.in_flight:>8} {f.failed:>7} {f.credits_captured:>8}"
            f" {f.provider_cost_micro_usd / 1e6:>9.2f} {f.margin_micro_usd / 1e6:>9.2f}"
        )


def _print_card(card: Any) -> None:
    typer.echo(f"user: {card.telegram_id}")
    typer.echo(f"username: {'@' + card.username if card.username else '-'}")
    typer.echo(f"name: {card.first_name or '-'}")
    typer.echo(f"language: {card.language}")
    typer.echo(f"status: {'blocked' if card.is_blocked else 'active'}")
    typer.echo(f"balance: {card.balance} (held {card.held})")
    typer.echo(f"last seen: {card.last_seen_at.isoformat()}")


@admin_app.command("user")
def admin_user(query: str = typer.Argument(..., help="Telegram id or @username")) -> None:
    """A user's card: balance, status, last seen."""

    async def action(service: Any, session: Any) -> Any:
        return await service.find_user(session=session, query=query)

    card = _admin_run(action)
    if card is None:
        _fail(f"no user {query}")
    _print_card(card)


def _adjust(query: str, amount: int, reason: str, key: str | None, sign: int) -> None:
    import uuid

    if amount <= 0:
        _fail("the amount must be a whole number above zero")
    idempotency = key or f"cli:{uuid.uuid4()}"

    async def action(service: Any, session: Any) -> Any:
        card = await service.user(session=session, query=query)
        return card.telegram_id, await service.adjust_credits(
            session=session,
            user_id=card.telegram_id,
            amount=sign * amount,
            reason=reason,
            key=idempotency,
            admin_id=None,
        )

    try:
        user_id, result = _admin_run(action)
    except Exception as error:
        _admin_fail_on(error)
        raise
    verb = "granted" if sign > 0 else "took"
    again = " (already done with this key: nothing changed)" if result.replayed else ""
    typer.echo(f"{verb} {amount} for {user_id}; balance {result.balance}{again}")


@admin_app.command("grant")
def admin_grant(
    query: str = typer.Argument(..., help="Telegram id or @username"),
    amount: int = typer.Argument(..., help="Credits to add"),
    reason: str = typer.Option(..., "--reason", help="Why; shown in the user's history"),
    key: str | None = typer.Option(None, "--key", help="Idempotency key: the same key never applies twice"),
) -> None:
    """Add credits through the ledger, with a reason."""
    _adjust(query, amount, reason, key, 1)


@admin_app.command("take")
def admin_take(
    query: str = typer.Argument(..., help="Telegram id or @username"),
    amount: int = typer.Argument(..., help="Credits to take"),
    reason: str = typer.Option(..., "--reason", help="Why; shown in the user's history"),
    key: str | None = typer.Option(None, "--key", help="Idempotency key: the same key never applies twice"),
) -> None:
    """Take credits through the ledger, with a reason; refused below zero."""
    _adjust(query, amount, reason, key, -1)


def _set_blocked(query: str, blocked: bool) -> None:
    async def action(service: Any, session: Any) -> Any:
        card = await service.user(session=session, query=query)
        await service.set_blocked(session=session, user_id=card.telegram_id, blocked=blocked)
        return card.telegram_id

    try:
        user_id = _admin_run(action)
    except Exception as error:
        _admin_fail_on(error)
        raise
    typer.echo(f"{'blocked' if blocked else 'unblocked'} {user_id}")


@admin_app.command("block")
def admin_block(query: str = typer.Argument(..., help="Telegram id or @username")) -> None:
    """Block a user: they are told once and get no answer after that."""
    _set_blocked(query, True)


@admin_app.command("unblock")
def admin_unblock(query: str = typer.Argument(..., help="Telegram id or @username")) -> None:
    """Unblock a user."""
    _set_blocked(query, False)


@admin_app.command("broadcast")
def admin_broadcast(
    text: str = typer.Argument(..., help="The message (HTML), sent to every user who is not blocked"),
) -> None:
    """Queue a broadcast; the running bot or worker sends it (its recovery sweep picks it up)."""

    from aisha.admin.errors import BroadcastRefused

    async def action(service: Any, session: Any) -> Any:
        return await service.create_broadcast(session=session, text=text, created_by=0)

    try:
        broadcast_id = _admin_run(action)
    except BroadcastRefused as refused:
        _fail(
            f"refused, nothing queued: Telegram would not send this text ({refused.reason}). Only the"
            " tags b, i, u, s, a, code, pre, blockquote, tg-spoiler and tg-emoji, each closed; write"
            " &lt; for a < that starts no tag"
        )
    typer.echo(f"broadcast {broadcast_id} queued; the running bot or worker sends it")


@admin_app.command("broadcast-stop")
def admin_broadcast_stop() -> None:
    """Stop every running broadcast."""

    async def action(service: Any, session: Any) -> Any:
        return await service.stop_broadcasts(session=session)

    typer.echo(f"stopped {_admin_run(action)} broadcast(s)")
