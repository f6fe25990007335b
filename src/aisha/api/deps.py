"""Typed dependencies for the HTTP routes.

The routes see the running process through `AppContext` (what `aisha.runtime.Runtime` offers),
so the HTTP adapter never imports the runtime that serves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Protocol

from fastapi import Depends, Request

if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher

    from aisha.config import Settings
    from aisha.container import Services


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


RuntimeDep = Annotated["AppContext", Depends(get_runtime)]
