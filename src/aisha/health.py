"""Readiness of every dependency, for GET /readyz and `aisha doctor`."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from aisha.storage.public import PublicRoute, unreachable_reason

if TYPE_CHECKING:
    from aiogram import Bot

    from aisha.config import Settings
    from aisha.container import Services

CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "down", "not configured" or "warning" (works, or not, but needs a look)
    required: bool
    latency_ms: float | None
    detail: str = ""

    @property
    def failing(self) -> bool:
        return self.required and self.status != "ok"


async def _timed(name: str, required: bool, probe: Callable[[], Awaitable[object]]) -> CheckResult:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), timeout=CHECK_TIMEOUT_SECONDS)
    except Exception as error:  # any failure means "down"; say why without secrets
        elapsed = (time.perf_counter() - started) * 1000
        return CheckResult(name, "down", required, round(elapsed, 1), type(error).__name__)
    return CheckResult(name, "ok", required, round((time.perf_counter() - started) * 1000, 1))


def _configured(name: str, value: object) -> CheckResult:
    status = "ok" if value else "not configured"
    return CheckResult(name, status, False, None)


def _local_bot_api_dir(folder: Path) -> CheckResult:
    """A local Bot API server's folder: every file is read there, so it is required."""
    name = "botapi-dir"
    if not (folder.is_dir() and os.access(folder, os.R_OK | os.X_OK)):
        return CheckResult(
            name, "down", True, None, f"TELEGRAM_API_LOCAL_DIR {folder} is not a readable folder"
        )
    free_mb = shutil.disk_usage(folder).free // 2**20
    return CheckResult(name, "ok", True, None, f"{folder}, {free_mb} MB free")


async def check_all(services: Services, bot: Bot) -> list[CheckResult]:
    settings = services.settings

    async def database() -> None:
        async with services.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def redis() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(settings.redis_url or "", socket_connect_timeout=CHECK_TIMEOUT_SECONDS)
        try:
            await client.ping()
        finally:
            await client.aclose()

    async def storage() -> None:
        await services.storage.exists("health/probe")

    checks = [
        _timed("database", True, database),
        _timed("storage", True, storage),
        _timed("telegram", True, bot.get_me),
    ]
    if settings.redis_url:
        checks.append(_timed("redis", True, redis))
    results = list(await asyncio.gather(*checks))
    if not settings.redis_url:
        results.append(
            CheckResult("redis", "not configured", False, None, "in-memory jobs, FSM in the database")
        )
    if settings.telegram_api_local and settings.telegram_api_local_dir is not None:
        results.append(await asyncio.to_thread(_local_bot_api_dir, settings.telegram_api_local_dir))
    results.append(_configured("fal", settings.fal_key))
    results.append(_configured("openai", settings.openai_api_key))
    return results


def archive_check(settings: Settings) -> CheckResult:
    """Which way FAL gets training archives, and a warning when that way can't work (`aisha doctor`).

    Judged from the configuration alone: whether FAL can reach an address is not something this
    machine can test.
    """
    route = settings.archive_route
    if route is PublicRoute.PRESIGNED:
        url = settings.s3_public_endpoint_url or ""
        detail = f"presigned S3 links on S3_PUBLIC_ENDPOINT_URL {url}"
        fix = "set S3_PUBLIC_ENDPOINT_URL to the bucket's public address, or unset it to use PUBLIC_BASE_URL"
    elif route is PublicRoute.SIGNED_LINK:
        url = settings.public_base_url or ""
        detail = f"signed links on PUBLIC_BASE_URL {url}/files/, streamed from storage by the api"
        fix = "set PUBLIC_BASE_URL to the address the internet reaches this bot at"
    else:
        detail = "uploaded to FAL's storage (no PUBLIC_BASE_URL or S3_PUBLIC_ENDPOINT_URL)"
        return CheckResult("archive", "ok", False, None, detail)
    reason = unreachable_reason(url)
    if reason is not None:
        return CheckResult(
            "archive", "warning", False, None, f"{detail}: FAL can't fetch it, {reason}; {fix}"
        )
    if settings.s3_public_endpoint_url and not settings.storage_url.startswith("s3://"):
        return CheckResult(
            "archive",
            "warning",
            False,
            None,
            f"{detail}; S3_PUBLIC_ENDPOINT_URL is ignored without s3:// storage",
        )
    return CheckResult("archive", "ok", False, None, detail)
