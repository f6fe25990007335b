"""How a provider outside (FAL) gets a stored file from us, decided once from the settings.

Three routes, in order of preference:

- ``PRESIGNED``: an S3 presigned URL on ``S3_PUBLIC_ENDPOINT_URL``, the bucket's outside address;
- ``SIGNED_LINK``: the HTTP app's own signed, expiring ``/files/`` link on ``PUBLIC_BASE_URL``,
  streamed from storage (any backend);
- ``PROVIDER_UPLOAD``: no public address at all: the file is uploaded to the provider's storage.

A presigned URL is never built on ``S3_ENDPOINT_URL``: that is how *our* processes reach the
bucket (``http://minio:9000`` in compose), a name nobody outside can resolve.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from urllib.parse import urlsplit


class PublicRoute(StrEnum):
    PRESIGNED = "presigned"
    SIGNED_LINK = "signed_link"
    PROVIDER_UPLOAD = "provider_upload"


def public_route(
    *, storage_url: str, s3_public_endpoint_url: str | None, public_base_url: str | None
) -> PublicRoute:
    if storage_url.startswith("s3://") and s3_public_endpoint_url:
        return PublicRoute.PRESIGNED
    if public_base_url:
        return PublicRoute.SIGNED_LINK
    return PublicRoute.PROVIDER_UPLOAD


def unreachable_reason(url: str) -> str | None:
    """Why a host outside our network could not fetch ``url``, or None if it may.

    Loopback, private, link-local and other non-global addresses, and names with no dot
    (``minio``, ``localhost``: only a local resolver or a compose network knows them).
    """
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host:
        return "it has no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if "." not in host or host.endswith((".localhost", ".local", ".internal")):
            return f"{host!r} is a local name, not resolvable on the internet"
        return None
    if address.is_loopback:
        return f"{host} is a loopback address"
    if not address.is_global:
        return f"{host} is a private address"
    return None
