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
from tests.integration.conftest import S3Server, s3_bucket, s3_server

__all__ = ["s3_bucket", "s3_server"]  # fixtures, used by name

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
        "archive": "ok",
    }
    assert "fal-secret-key-value" not in table + stderr.decode()
    archive = table.splitlines()[-1]
    assert archive.endswith("uploaded to FAL's storage (no PUBLIC_BASE_URL or S3_PUBLIC_ENDPOINT_URL)")


async def _doctor(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aisha",
        "doctor",
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode() + stderr.decode()


async def test_doctor_says_how_fal_gets_archives_on_the_compose_stack(
    telegram: FakeTelegramServer, db: Database, tmp_path: Path, s3_server: S3Server, s3_bucket: str
) -> None:
    compose = {
        "BOT_TOKEN": telegram.token,
        "TELEGRAM_API_URL": telegram.base_url,
        "DATABASE_URL": db.url,
        "STORAGE_URL": f"s3://{s3_bucket}",
        "S3_ENDPOINT_URL": s3_server.endpoint_url.replace("127.0.0.1", "localhost"),  # like minio:9000
        "S3_ACCESS_KEY": s3_server.access_key,
        "S3_SECRET_KEY": s3_server.secret_key,
        "S3_REGION": s3_server.region,
        "PUBLIC_BASE_URL": "https://bot.example.com",
        "WEBHOOK_SECRET": "doctor-webhook-secret-0123456789",
        "FAL_KEY": "fal-secret-key-value",
    }
    code, output = await _doctor(compose, tmp_path)
    assert code == 0, output
    assert (
        "archive    ok                      -  signed links on PUBLIC_BASE_URL https://bot.example.com/files/,"
        " streamed from storage by the api" in output
    )

    # The bucket's internal name given as its public one: said plainly, not a start-up failure.
    code, output = await _doctor(compose | {"S3_PUBLIC_ENDPOINT_URL": "http://minio:9000"}, tmp_path)
    assert code == 0, output
    assert (
        "archive    warning                 -  presigned S3 links on S3_PUBLIC_ENDPOINT_URL http://minio:9000:"
        " FAL can't fetch it, 'minio' is a local name, not resolvable on the internet;"
        " set S3_PUBLIC_ENDPOINT_URL to the bucket's public address, or unset it to use PUBLIC_BASE_URL"
    ) in output
