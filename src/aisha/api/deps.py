"""Typed dependencies for the HTTP routes.

The routes see the running process through `AppContext` (what `aisha.runtime.Runtime` offers),
so the HTTP adapter never imports the runtime that serves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request
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


async def get_runtime(request: Request) -> AppContext:
    # async: FastAPI runs a plain function dependency in a worker thread, a hop per request.
    runtime: AppContext = request.app.state.runtime
    return runtime


async def get_rules(request: Request) -> HttpRules:
    rules: HttpRules = request.app.state.rules
    return rules


RuntimeDep = Annotated["AppContext", Depends(get_runtime)]
RulesDep = Annotated[HttpRules, Depends(get_rules)]
