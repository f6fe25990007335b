"""The avatar's LoRA as the image model can download it, checked before each submission."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.models import Avatar
from aisha.clock import Clock
from aisha.db.session import unit_of_work
from aisha.generation.models import GenerationRules
from aisha.generation.ports import ImageGenerator
from aisha.storage import ObjectStorage

log = structlog.get_logger(__name__)


class LiveLoras:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        rules: GenerationRules,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._rules = rules
        # avatar id -> (the LoRA URL that answered, when): one HEAD per avatar per `lora_check_ttl`.
        self._lora_checked: dict[uuid.UUID, tuple[str, datetime]] = {}

    def forget(self, avatar_id: uuid.UUID) -> None:
        """A job with this avatar failed: its LoRA may be why, so ask the CDN next time."""
        self._lora_checked.pop(avatar_id, None)

    async def live(
        self, generator: ImageGenerator, avatar_id: uuid.UUID, lora_url: str, lora_key: str | None
    ) -> str:
        """A URL of the avatar's LoRA that the provider can download: its CDN file while it
        answers, else our copy (made when training ended) re-published on its storage and kept on
        the avatar.

        A HEAD before the submission rather than reacting to a failed result: reacting would
        mean a queue round trip for nothing, then a second submission for the same row (a second
        request id, a webhook for the first to ignore) and the user waiting twice. The answer is
        cached per avatar for `lora_check_ttl`, so a burst of generations costs one HEAD; a LoRA
        that expires within that window fails its job, which releases the hold and drops the
        cache, so the next generation republishes.
        """
        now = self._clock.now()
        checked = self._lora_checked.get(avatar_id)
        if checked is not None and checked[0] == lora_url and now - checked[1] < self._rules.lora_check_ttl:
            return lora_url
        if not await generator.lora_answers(lora_url):
            if lora_key is None:
                # No copy of ours (trained before copies were kept, or the CDN's file was gone first).
                log.error("generation.lora_gone_without_copy", avatar_id=str(avatar_id))
                return lora_url
            lora_url = await generator.publish_lora(await self._storage.get(lora_key))
            async with unit_of_work(self._sessions) as session:
                await session.execute(
                    update(Avatar)
                    .where(Avatar.id == avatar_id)
                    .values(lora_url=lora_url, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            log.info("generation.lora_republished", avatar_id=str(avatar_id))
        self._lora_checked[avatar_id] = (lora_url, now)
        return lora_url
