"""Bad configuration is refused with one line naming the variable; good configuration is read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aisha.config import ConfigError, load_settings
from tests.conftest import run_aisha


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BOT_TOKEN", "PUBLIC_BASE_URL", "WEBHOOK_SECRET", "DATABASE_URL", "REDIS_URL", "ADMIN_IDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_defaults_are_the_embedded_ones() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite+aiosqlite:///./data/aisha.db"
    assert settings.redis_url is None
    assert settings.storage_url == "file://./data/files"
    assert settings.webhook_mode is False
    assert settings.default_locale == "ru"


def test_postgres_url_is_driven_through_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db:5432/aisha")
    assert load_settings().database_url == "postgresql+asyncpg://u@db:5432/aisha"


def test_admin_ids_parse_from_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_IDS", "1, 22,333")
    assert load_settings().admin_ids == frozenset({1, 22, 333})


def test_metrics_networks_parse_from_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_ALLOWED_NETWORKS", "127.0.0.1, 10.0.0.0/8,::1")
    assert [str(n) for n in load_settings().metrics_allowed_networks] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PUBLIC_BASE_URL": "https://bot.example.com"}, "WEBHOOK_SECRET"),
        ({"PUBLIC_BASE_URL": "https://bot.example.com", "WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET"),
        (
            {"PUBLIC_BASE_URL": "https://bot.example.com", "WEBHOOK_SECRET": "has spaces in it!!!!"},
            "WEBHOOK_SECRET",
        ),
        ({"PUBLIC_BASE_URL": "bot.example.com"}, "PUBLIC_BASE_URL"),
        ({"TELEGRAM_API_URL": "ftp://x"}, "TELEGRAM_API_URL"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"STORAGE_URL": "gs://bucket"}, "STORAGE_URL"),
        ({"ADMIN_IDS": "alice"}, "ADMIN_IDS"),
        ({"HTTP_PORT": "99999"}, "HTTP_PORT"),
        ({"HOLD_TTL_SECONDS": "3600"}, "HOLD_TTL_SECONDS"),
        ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"}, "METRICS_ALLOWED_NETWORKS"),
        ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/33"}, "METRICS_ALLOWED_NETWORKS"),
    ],
)
def test_bad_configuration_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert named in message
    assert "\n" not in message


def test_secret_is_not_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://bot.example.com")
    monkeypatch.setenv("WEBHOOK_SECRET", "tiny-secret")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert "tiny-secret" not in str(error.value)


def _aisha(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_aisha(*args, env=env, cwd=cwd, timeout=60)


def test_cli_bad_configuration_is_one_line_and_nonzero(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PUBLIC_BASE_URL": "https://bot.example.com", "BOT_TOKEN": "1:x"}
    result = _aisha("run", env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "WEBHOOK_SECRET" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_without_bot_token_explains(tmp_path: Path) -> None:
    result = _aisha("run", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "BOT_TOKEN is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_lists_its_commands(tmp_path: Path) -> None:
    result = _aisha("--help", env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"}, cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "api", "worker", "migrate"):
        assert command in result.stdout
