"""The one error the sandbox's page API answers with: an HTTP status and a locale key."""

from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """Refused input or a failed step; the page shows the text (``key`` in locales/*/sandbox.json)."""

    def __init__(self, status: int, key: str, **args: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.args_ = args
