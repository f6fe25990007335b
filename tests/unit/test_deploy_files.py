"""The deployment files say what the code does (no Docker engine here to run them)."""

from __future__ import annotations

from pathlib import Path

import yaml

from aisha.config import Settings, load_settings
from aisha.health import archive_check
from aisha.storage.public import PublicRoute

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_every_service_with_a_healthcheck_or_a_reason() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "minio", "migrate", "api", "worker", "nginx"} <= set(services)
    for name in ("postgres", "redis", "minio", "nginx"):
        assert "healthcheck" in services[name], name
    assert services["api"]["command"] == ["aisha", "api"]
    assert services["worker"]["command"] == ["aisha", "worker"]
    assert services["api"]["env_file"] == "aisha.env"


def test_the_local_bot_api_servers_folder_is_where_api_and_worker_read_it() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    server = services["telegram-bot-api"]
    assert server["image"].startswith("aiogram/telegram-bot-api")
    assert set(server["environment"]) == {"TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_LOCAL"}
    [server_volume] = server["volumes"]
    volume, server_dir = server_volume.split(":")
    assert volume in compose["volumes"] and server_dir == "/var/lib/telegram-bot-api"  # the image's --dir
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "aisha.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert env["TELEGRAM_API_URL"] == "http://telegram-bot-api:8081"
    assert env["TELEGRAM_API_LOCAL"] == "true"
    for name in ("api", "worker"):
        # Mounted read-only at the path the server names its files by, in the group that may read them.
        assert f"{volume}:{env['TELEGRAM_API_LOCAL_DIR']}:ro" in services[name]["volumes"], name
        assert "101" in services[name]["group_add"], name


def test_env_example_names_only_real_settings() -> None:
    names = {
        line.split("=", 1)[0]
        for line in (ROOT / "deploy" / "aisha.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    known = {name.upper() for name in Settings.model_fields}
    assert names <= known, names - known


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER aisha\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_readme_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert missing == []


def test_the_compose_stack_gives_fal_training_archives_through_nginx() -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "aisha.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    filled = {name.lower(): value for name, value in example.items() if value}
    settings = load_settings(_env_file=None, webhook_secret="compose-webhook-secret-0123", **filled)
    assert settings.s3_endpoint_url == "http://minio:9000" and settings.s3_public_endpoint_url is None
    assert settings.archive_route is PublicRoute.SIGNED_LINK
    assert archive_check(settings).status == "ok"
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "files/" in nginx.split("location ~ ^/(", 1)[1].split(")", 1)[0]  # proxied to the api
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    assert "ports" not in compose["services"]["minio"]  # the bucket stays private
