"""The avatar feature's jobs: a photo's check (`avatars.photo`), a training (`avatars.train`),
our copy of a trained LoRA (`avatars.keep_lora`), and the recovery sweep."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from aisha.avatars.ports import KEEP_JOB, PHOTO_JOB, TRAIN_JOB
from aisha.bot.presenters.avatars import AvatarNotifier

if TYPE_CHECKING:
    from aisha.container import Services


def register(services: Services) -> None:
    avatars = services.avatars
    # The presenter is the bot's: attached here, where adapters meet, not in the container.
    avatars.tell_through(AvatarNotifier(messenger=services.messenger, translator=services.translator))

    async def photo_job(
        *,
        user_id: int,
        avatar_id: str,
        file_id: str,
        file_size: int | None = None,
        number: int = 0,
        file_name: str | None = None,
        **_queued_before: object,  # jobs queued by an older version also carried message_id
    ) -> None:
        await avatars.photos.intake_photo(
            user_id=user_id,
            avatar_id=uuid.UUID(avatar_id),
            file_id=file_id,
            file_size=file_size,
            number=number,
            file_name=file_name,
        )

    async def train_job(*, avatar_id: str) -> None:
        await avatars.flow.train(avatar_id=uuid.UUID(avatar_id))

    async def keep_job(*, avatar_id: str) -> None:
        await avatars.flow.keep_lora(avatar_id=uuid.UUID(avatar_id))

    services.queue.register(PHOTO_JOB, photo_job)
    services.queue.register(TRAIN_JOB, train_job)
    services.queue.register(KEEP_JOB, keep_job)
    services.recovery.register("avatars.stuck", avatars.flow.sweep)
