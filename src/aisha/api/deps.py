"""What the HTTP routes reach: the running process, the rules read from the settings, and one
shape for a refusal.

The routes see the running process through `AppContext` (what `aisha.runtime.Runtime` offers),
so the HTTP adapter never imports the runtime that serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from pydantic import SecretStr

from aisha.config import Network, Settings

if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher

    from aisha.container import Services


@dataclass(frozen=True)
class HttpRules:
    """What the routes check, read from the settings once when the app is built."""

    webhook_secret: str | None  # Telegram's X-Telegram-Bot-Api-Secret-Token; None: refuse every update
    metrics_networks: tuple[Network, ...]  # empty: every peer
    metrics_token: str | None  # None: no bearer token asked

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpRules:
        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return cls(
            webhook_secret=secret(settings.webhook_secret),
            metrics_networks=settings.metrics_allowed_networks,
            metrics_token=secret(settings.metrics_token),
        )


class AppContext(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def services(self) -> Services: ...

    @property
    def bot(self) -> Bot: ...

    @property
    def dispatcher(self) -> Dispatcher: ...


RUNTIME = web.AppKey("runtime", AppContext)
RULES = web.AppKey("rules", HttpRules)


def runtime_of(request: web.Request) -> AppContext:
    return request.app[RUNTIME]


def rules_of(request: web.Request) -> HttpRules:
    return request.app[RULES]


def refusal(status: int, detail: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error answer, with the body every client of ours has always read: {"detail": ...}."""
    return web.json_response({"detail": detail}, status=status, headers=headers)
