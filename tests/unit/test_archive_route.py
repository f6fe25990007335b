"""Which way FAL gets training archives, as `aisha doctor` reports it for each configuration."""

from __future__ import annotations

from typing import Any

import pytest

from aisha.config import load_settings
from aisha.health import archive_check
from aisha.storage.public import PublicRoute, unreachable_reason

SECRET = "doctor-webhook-secret-0123456789"


def _settings(**values: Any) -> Any:
    base: dict[str, Any] = {
        "_env_file": None,
        "storage_url": "file://./data/files",
        "s3_endpoint_url": None,
        "s3_public_endpoint_url": None,
        "public_base_url": None,
        "webhook_secret": SECRET,
    }
    return load_settings(**(base | values))


@pytest.mark.parametrize(
    ("values", "route", "status", "detail"),
    [
        (  # deploy/ as shipped: MinIO inside the compose network, nginx's public address
            {
                "storage_url": "s3://aisha",
                "s3_endpoint_url": "http://minio:9000",
                "public_base_url": "https://bot.example.com",
            },
            PublicRoute.SIGNED_LINK,
            "ok",
            "signed links on PUBLIC_BASE_URL https://bot.example.com/files/, streamed from storage by the api",
        ),
        (
            {
                "storage_url": "s3://aisha",
                "s3_endpoint_url": "http://minio:9000",
                "s3_public_endpoint_url": "https://files.example.com",
                "public_base_url": "https://bot.example.com",
            },
            PublicRoute.PRESIGNED,
            "ok",
            "presigned S3 links on S3_PUBLIC_ENDPOINT_URL https://files.example.com",
        ),
        (
            {"storage_url": "s3://aisha", "s3_endpoint_url": "http://minio:9000"},
            PublicRoute.PROVIDER_UPLOAD,
            "ok",
            "uploaded to FAL's storage (no PUBLIC_BASE_URL or S3_PUBLIC_ENDPOINT_URL)",
        ),
        (
            {},
            PublicRoute.PROVIDER_UPLOAD,
            "ok",
            "uploaded to FAL's storage (no PUBLIC_BASE_URL or S3_PUBLIC_ENDPOINT_URL)",
        ),
        (  # the old mistake: the internal endpoint given as the public one
            {"storage_url": "s3://aisha", "s3_public_endpoint_url": "http://minio:9000"},
            PublicRoute.PRESIGNED,
            "warning",
            "presigned S3 links on S3_PUBLIC_ENDPOINT_URL http://minio:9000: FAL can't fetch it, 'minio' is a"
            " local name, not resolvable on the internet; set S3_PUBLIC_ENDPOINT_URL to the bucket's public"
            " address, or unset it to use PUBLIC_BASE_URL",
        ),
        (
            {"public_base_url": "http://127.0.0.1:8080"},
            PublicRoute.SIGNED_LINK,
            "warning",
            "signed links on PUBLIC_BASE_URL http://127.0.0.1:8080/files/, streamed from storage by the api:"
            " FAL can't fetch it, 127.0.0.1 is a loopback address; set PUBLIC_BASE_URL to the address the"
            " internet reaches this bot at",
        ),
        (
            {"public_base_url": "http://192.168.1.20"},
            PublicRoute.SIGNED_LINK,
            "warning",
            "signed links on PUBLIC_BASE_URL http://192.168.1.20/files/, streamed from storage by the api:"
            " FAL can't fetch it, 192.168.1.20 is a private address; set PUBLIC_BASE_URL to the address the"
            " internet reaches this bot at",
        ),
        (  # a bucket address with files on the local disk: the setting does nothing
            {
                "s3_public_endpoint_url": "https://files.example.com",
                "public_base_url": "https://bot.example.com",
            },
            PublicRoute.SIGNED_LINK,
            "warning",
            "signed links on PUBLIC_BASE_URL https://bot.example.com/files/, streamed from storage by the api;"
            " S3_PUBLIC_ENDPOINT_URL is ignored without s3:// storage",
        ),
    ],
)
def test_doctor_names_the_route_and_warns_when_fal_cannot_reach_it(
    values: dict[str, Any], route: PublicRoute, status: str, detail: str
) -> None:
    settings = _settings(**values)
    assert settings.archive_route is route
    check = archive_check(settings)
    assert (check.name, check.status, check.detail) == ("archive", status, detail)
    assert not check.failing  # a warning, never a reason to refuse to start


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://minio:9000/b/k", "'minio' is a local name, not resolvable on the internet"),
        ("http://localhost:8080", "'localhost' is a local name, not resolvable on the internet"),
        ("http://files.internal", "'files.internal' is a local name, not resolvable on the internet"),
        ("http://[::1]:9000", "::1 is a loopback address"),
        ("http://10.0.0.5", "10.0.0.5 is a private address"),
        ("http://169.254.1.1", "169.254.1.1 is a private address"),
        ("https://files.example.com", None),
        ("https://8.8.8.8/x", None),
    ],
)
def test_hosts_outside_cannot_reach(url: str, reason: str | None) -> None:
    assert unreachable_reason(url) == reason


def test_the_public_endpoint_must_be_an_http_url() -> None:
    from aisha.config import ConfigError

    with pytest.raises(ConfigError, match="S3_PUBLIC_ENDPOINT_URL must be an http"):
        _settings(s3_public_endpoint_url="minio:9000")
