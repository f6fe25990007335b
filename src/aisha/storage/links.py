"""Time-limited signed links to stored files, served by the HTTP app under PUBLIC_BASE_URL.

This is how FAL fetches a training archive from a bot on local storage: the link names the key,
an expiry time and an HMAC over both, so it can't be altered or reused after it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import quote, urlencode

FILES_PATH = "/files/"


class LinkSigner:
    def __init__(self, secret: bytes, base_url: str, *, now: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._base_url = base_url.rstrip("/")
        self._now = now

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, key: str, expires_in: int) -> str:
        expires = int(self._now()) + expires_in
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{self._base_url}{FILES_PATH}{quote(key)}?{query}"

    def verify(self, key: str, expires: str, signature: str) -> bool:
        if not expires.isdigit() or int(expires) < self._now():
            return False
        return hmac.compare_digest(self._signature(key, int(expires)), signature)


def link_secret(bot_token: str) -> bytes:
    """Derived from the bot token, so every process of one deployment agrees with no extra setting."""
    return hmac.new(bot_token.encode(), b"aisha file links", hashlib.sha256).digest()
