"""/readyz and `aisha doctor` report each dependency; a stopped one is down with 503 / exit 1."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from aisha.sandbox import FakeTelegramServer
from tests.conftest import Database

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


async def test_readyz_is_ok_when_everything_answers(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime = await start_app(make_settings())
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{runtime.http_port}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok",
        "storage": "ok",
        "telegram": "ok",
        "redis": "not configured",
        "fal": "not configured",
        "openai": "not configured",
    }
    assert body["checks"]["database"]["latency_ms"] >= 0


async def test_readyz_reports_an_unreachable_redis_as_down(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime = await start_app(make_settings(redis_url=UNREACHABLE_REDIS), serve_only=True)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{runtime.http_port}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["redis"]["required"] is True
    assert body["checks"]["database"]["status"] == "ok"


async def test_readyz_needs_the_local_bot_api_servers_folder(
    make_settings: Callable[..., Any], start_app: Callable[..., Any], tmp_path: Path
) -> None:
    missing = tmp_path / "not-mounted"
    runtime = await start_app(
        make_settings(telegram_api_local=True, telegram_api_local_dir=str(missing)), serve_only=True
    )
    async with httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{runtime.http_port}/readyz"
        down = await client.get(url)
        missing.mkdir()
        up = await client.get(url)
    assert down.status_code == 503
    check = down.json()["checks"]["botapi-dir"]
    assert check["status"] == "down" and check["required"] is True
    assert check["detail"] == f"TELEGRAM_API_LOCAL_DIR {missing} is not a readable folder"
    assert up.status_code == 200
    assert up.json()["checks"]["botapi-dir"]["detail"].startswith(f"{missing}, ")


async def test_doctor_prints_the_same_table(
    telegram: FakeTelegramServer, db: Database, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BOT_TOKEN": telegram.token,
        "TELEGRAM_API_URL": telegram.base_url,
        "DATABASE_URL": db.url,
        "STORAGE_URL": f"file://{tmp_path / 'files'}",
        "REDIS_URL": UNREACHABLE_REDIS,
        "FAL_KEY": "fal-secret-key-value",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aisha",
        "doctor",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    table = stdout.decode()
    assert process.returncode == 1, stderr.decode()
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    assert rows == {
        "database": "ok",
        "storage": "ok",
        "telegram": "ok",
        "redis": "down",
        "fal": "ok",
        "openai": "not",
    }
    assert "fal-secret-key-value" not in table + stderr.decode()
