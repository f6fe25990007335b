"""Reading and locking avatar rows, storage key layout, and the wizard's upload state: the
helpers the service, the photo intake and the training flow share."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.errors import AvatarNotFound
from aisha.avatars.models import UPLOAD_KEY, Avatar, AvatarPhoto, AvatarStatus, DraftDiscarded
from aisha.db.session import after_commit
from aisha.storage import ObjectStorage


def photo_prefix(user_id: int, avatar_id: uuid.UUID) -> str:
    return f"avatars/{user_id}/{avatar_id}"


def lora_prefix(user_id: int, avatar_id: uuid.UUID) -> str:
    """Our copy of the avatar's LoRA: kept apart from the photos, which are purged after training."""
    return f"loras/{user_id}/{avatar_id}"


def new_trigger_phrase() -> str:
    # A rare token the base model knows nothing about; unique per avatar (DB constraint too).
    return f"ohwx{secrets.token_hex(5)}"


def upload_state(avatar: Avatar) -> dict[str, Any]:
    return dict(avatar.training_config.get(UPLOAD_KEY) or {})


def has_upload_status(avatar: Avatar) -> bool:
    """A draft has one (from its first photo on); a confirmed avatar until training replaces it."""
    return avatar.status is AvatarStatus.DRAFT or UPLOAD_KEY in avatar.training_config


def save_upload_state(avatar: Avatar, state: dict[str, Any]) -> None:
    avatar.training_config = {**avatar.training_config, UPLOAD_KEY: state}


def turn_taken(state: dict[str, Any], now: datetime) -> bool:
    """Someone holds the turn at the status message (its lease has not run out)."""
    lease = state.get("lease")
    return isinstance(lease, str) and datetime.fromisoformat(lease) > now


async def owned(session: AsyncSession, avatar_id: uuid.UUID, user_id: int) -> Avatar:
    avatar = await session.scalar(select(Avatar).where(Avatar.id == avatar_id, Avatar.user_id == user_id))
    if avatar is None:
        raise AvatarNotFound(str(avatar_id))
    return avatar


async def locked(session: AsyncSession, avatar_id: uuid.UUID, user_id: int | None = None) -> Avatar | None:
    query = select(Avatar).where(Avatar.id == avatar_id).with_for_update()
    if user_id is not None:
        query = query.where(Avatar.user_id == user_id)
    avatar: Avatar | None = await session.scalar(query.execution_options(populate_existing=True))
    return avatar


async def photo_count(session: AsyncSession, avatar_id: uuid.UUID) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(AvatarPhoto).where(AvatarPhoto.avatar_id == avatar_id)
        )
        or 0
    )


async def photo_keys(session: AsyncSession, avatar_id: uuid.UUID, limit: int | None = None) -> list[str]:
    """The avatar's stored photos, in the order they came."""
    query = (
        select(AvatarPhoto.storage_key)
        .where(AvatarPhoto.avatar_id == avatar_id)
        .order_by(AvatarPhoto.created_at, AvatarPhoto.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


async def discard_draft(
    session: AsyncSession, *, storage: ObjectStorage, now: datetime, user_id: int, avatar_id: uuid.UUID
) -> DraftDiscarded | None:
    """The draft, its photo rows and its files go. None if there was no draft.

    The status message's button is the caller's to remove, unless a photo job holds the turn
    at that message: that one removes it when it finds the draft gone.
    """
    avatar = await locked(session, avatar_id, user_id)
    if avatar is None or avatar.status is not AvatarStatus.DRAFT:
        return None
    state = upload_state(avatar)
    held = turn_taken(state, now)
    button_left = state.get("message_id") if state.get("button") and not held else None
    await session.delete(avatar)
    await session.flush()
    # The files go once the row is gone for good (a photo job then finds no draft and adds none).
    after_commit(session, lambda: storage.delete_prefix(photo_prefix(user_id, avatar_id)))
    return DraftDiscarded(status_message=button_left, name=avatar.name)
