"""The session of the unit of work in progress, for code that can't take it as an argument
(aiogram's FSM storage), so its writes commit together with the update's."""

from __future__ import annotations

from contextvars import ContextVar

from sqlalchemy.ext.asyncio import AsyncSession

current_session: ContextVar[AsyncSession | None] = ContextVar("current_session", default=None)
