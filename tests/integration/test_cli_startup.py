"""`aisha run` that can't start tells the operator why in one line, and prints no secret."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_aisha


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _secrets() -> dict[str, str]:
    """A recognizable value for every secret setting, each different in every run."""

    def hex_() -> str:
        return uuid.uuid4().hex

    return {
        "BOT_TOKEN": f"7{uuid.uuid4().int % 10**9}:AAF{hex_()}",
        "FAL_KEY": f"{hex_()}:{hex_()}",
        "OPENAI_API_KEY": f"sk-{hex_()}",
        "S3_SECRET_KEY": hex_(),
        "WEBHOOK_SECRET": hex_(),
        "METRICS_TOKEN": hex_(),
    }


def _assert_no_secret(output: str, secrets: list[str]) -> None:
    for secret in secrets:
        # No piece of it either: every 8 characters of it are absent.
        pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
        leaked = sorted(piece for piece in pieces if piece in output)
        assert leaked == [], f"pieces of a secret were printed: {leaked}"


@pytest.mark.parametrize("down", ["database", "telegram"])
def test_a_start_up_crash_prints_one_short_line_and_no_secret(tmp_path: Path, down: str) -> None:
    secrets = _secrets()
    password = f"pw{uuid.uuid4().hex}"
    port = _closed_port()
    env = secrets | {"TELEGRAM_API_URL": f"http://127.0.0.1:{port}"}
    if down == "database":
        database_url = f"postgresql+asyncpg://aisha:{password}@127.0.0.1:{port}/aisha"
    else:
        database_url = f"sqlite:///{tmp_path / 'aisha.db'}"
    result = run_aisha("run", cwd=tmp_path, database_url=database_url, env=env, timeout=60)

    assert result.returncode == 1
    _assert_no_secret(result.stdout + result.stderr, [*secrets.values(), password])
    lines = result.stderr.strip().splitlines()
    # The operator's line, after the masked log line that carries the traceback.
    assert lines[-1].startswith("aisha: could not start: ")
    expected = "Connect call failed" if down == "database" else "TelegramNetworkError"
    assert expected in lines[-1]
    assert all(line.startswith("{") for line in lines[:-1])  # JSON log lines, no traceback dump
    assert "Traceback" not in result.stdout
