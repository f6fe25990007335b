"""The avatar training's job steps: `train` (intent, call, outcome) and the recovery `sweep`
(poll what FAL never reported, time out, purge, re-queue); the outcomes are in `outcomes.py`.

Money and status move together: the credit hold is committed with the intent (SUBMITTING) before
FAL is called, FAL's request id in a transaction of its own after it answered. No outside call
(FAL, storage, Telegram) runs inside a transaction that writes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select, update

from aisha.avatars import rows
from aisha.avatars.models import LORA_KEY, LORA_LOST, Avatar, AvatarStatus, AvatarType
from aisha.avatars.outcomes import IN_TRAINING, AvatarOutcomes
from aisha.avatars.ports import Trainer, TrainingRequest, TrainingState
from aisha.billing.errors import InsufficientCredits
from aisha.db.session import unit_of_work
from aisha.remote import RemoteError, RemoteRefused, RemoteUnavailable
from aisha.storage.public import PublicRoute
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

MAX_LINK_SECONDS = 7 * 24 * 3600  # the longest a presigned S3 URL may live


@dataclass(frozen=True, slots=True)
class _Claim:
    user_id: int
    name: str
    type: AvatarType
    trigger_phrase: str


@dataclass(frozen=True, slots=True)
class _Due:
    """What the sweep found to do."""

    pending: list[Any]  # (id, updated_at, submitted_at): PENDING, not sent for a while
    training: list[Any]  # (id, endpoint, request id, submitted_at): at FAL past `poll_after`
    finished: list[uuid.UUID]  # ended, photos still kept past retention
    drafts: list[Any]  # (id, user_id): abandoned drafts
    unkept: list[uuid.UUID]  # READY with no copy of the LoRA recorded


def _unanswered(avatar_id: uuid.UUID) -> tuple[Any, ...]:
    """Being submitted, FAL's answer not recorded (so never to be sent twice)."""
    return (
        Avatar.id == avatar_id,
        Avatar.status == AvatarStatus.SUBMITTING,
        Avatar.provider_request_id.is_(None),
    )


class AvatarFlow(AvatarOutcomes):
    # --- training --------------------------------------------------------------------------------

    async def train(self, *, avatar_id: uuid.UUID) -> None:
        """The `avatars.train` job: intent, call, outcome; FAL is never called inside a transaction.

        The archive is built and stored first; then one transaction holds the credits and marks
        the avatar SUBMITTING; then FAL gets the job (our id in its webhook URL); then a second
        transaction records the request id (SUBMITTED). A re-run of the job finds SUBMITTING and
        stops: only FAL's webhook (which adopts the request id) or the timeout settles it, so one
        hold never pays for two trainings.
        """
        async with self._sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            if avatar is None or avatar.status is not AvatarStatus.PENDING:
                return  # done by an earlier run, or gone
            keys = await rows.photo_keys(session, avatar_id)
            user_id = avatar.user_id
        trainer = self._trainer
        if trainer is None:
            await self._fail_unsubmitted(avatar_id, "unavailable", "FAL_KEY is not set")
            return
        images_url = await self._images_url(trainer, avatar_id, user_id, keys)
        if images_url is None:
            return
        claim = await self._claim(avatar_id)
        if claim is None:
            return
        try:
            request = await trainer.submit(
                avatar_type=claim.type,
                images_url=images_url,
                trigger_phrase=claim.trigger_phrase,
                avatar_id=avatar_id,
            )
        except RemoteRefused as exc:
            log.warning(
                "avatar.submit_refused", avatar_id=str(avatar_id), status=exc.status_code, error=exc.message
            )
            await self._finish(avatar_id, request_id=None, output=None, error="refused", reason="refused")
            return
        except RemoteUnavailable as exc:
            if exc.maybe_submitted:
                # FAL may have queued it: keep the hold; its webhook or the timeout settles it.
                log.warning("avatar.submit_outcome_unknown", avatar_id=str(avatar_id), error=str(exc))
                return
            # Certainly not queued (no connection, rate limited): back to PENDING, hold kept, and
            # the sweep sends it again.
            await self._unclaim(avatar_id)
            raise
        await self._submitted(avatar_id, request)

    async def _images_url(
        self, trainer: Trainer, avatar_id: uuid.UUID, user_id: int, keys: Sequence[str]
    ) -> str | None:
        """Where FAL fetches the photos, by the configured route. None: failed (and told)."""
        archive = await self._archive(keys)
        ttl = int(self.rules.archive_ttl.total_seconds())
        if self.rules.archive_route is not PublicRoute.PROVIDER_UPLOAD:
            # A presigned link on the bucket's public address, or our own signed link.
            archive_key = f"{rows.photo_prefix(user_id, avatar_id)}/training.zip"
            await self._storage.put(archive_key, archive, content_type="application/zip")
            return await self._storage.url(archive_key, expires_in=min(ttl, MAX_LINK_SECONDS))
        # No public address at all: FAL's own storage, expiring once training is over.
        try:
            return await trainer.upload_archive(archive, expires_in=ttl)
        except RemoteError as error:
            log.error("avatar.archive_upload_failed", avatar_id=str(avatar_id), error=str(error))
            await self._fail_unsubmitted(avatar_id, "unavailable", "the archive could not reach FAL")
            return None

    async def _archive(self, keys: Sequence[str]) -> bytes:
        # Pillow: loaded by the process that builds an archive (a job), not by every importer.
        from aisha.avatars.imaging import build_training_zip, normalize_for_training

        items: list[tuple[str, bytes]] = []
        for index, key in enumerate(keys, start=1):
            data = await self._storage.get(key)
            normalized = await asyncio.to_thread(normalize_for_training, data)
            items.append((f"{index:02d}.jpg", normalized))
        return await asyncio.to_thread(build_training_zip, items)

    async def _claim(self, avatar_id: uuid.UUID) -> _Claim | None:
        """PENDING → SUBMITTING with the credits held, committed before FAL hears of it."""
        insufficient = False
        async with unit_of_work(self._sessions) as session:
            avatar = await self._locked(session, avatar_id)
            if avatar is None or avatar.status is not AvatarStatus.PENDING:
                return None
            claim = _Claim(avatar.user_id, avatar.name, avatar.type, avatar.trigger_phrase)
            now = self._clock.now()
            if avatar.hold_id is None:  # else held by a try that certainly didn't reach FAL
                try:
                    async with session.begin_nested():
                        hold = await self._ledger.hold(
                            session=session,
                            user_id=claim.user_id,
                            amount=avatar.price,
                            key=f"avatar:{avatar_id}:hold",
                            reference=f"avatar:{avatar_id}",
                            description="avatars.ledger.training",
                        )
                except InsufficientCredits:
                    insufficient = True
                else:
                    avatar.hold_id = hold.hold_id
            if insufficient:
                avatar.status = AvatarStatus.FAILED
                avatar.error = "insufficient"
                avatar.finished_at = avatar.updated_at = now
            else:
                avatar.status = AvatarStatus.SUBMITTING
                avatar.submitted_at = avatar.submitted_at or now  # the timeout counts from the first try
                avatar.updated_at = now
                cost = self._prices.costs
                avatar.provider_cost_micro_usd = (
                    cost.avatar_portrait if claim.type is AvatarType.PORTRAIT else cost.avatar_style
                )
            locale = await user_locale(session, claim.user_id)
        if insufficient:
            await self._failed(user_id=claim.user_id, locale=locale, name=claim.name, reason="insufficient")
            await self._purge_if_due(avatar_id)
            return None
        return claim

    async def _unclaim(self, avatar_id: uuid.UUID) -> None:
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(Avatar)
                .where(*_unanswered(avatar_id))
                .values(status=AvatarStatus.PENDING, updated_at=self._clock.now())
                .execution_options(synchronize_session=False)
            )

    async def _submitted(self, avatar_id: uuid.UUID, request: TrainingRequest) -> None:
        """FAL's answer, committed on its own: SUBMITTING → SUBMITTED with the request id.

        If this never commits (a crash), the avatar stays SUBMITTING with its hold: FAL's webhook
        adopts the request id, or the sweep fails it and releases the hold after the timeout.
        """
        async with unit_of_work(self._sessions) as session:
            await session.execute(
                update(Avatar)
                .where(*_unanswered(avatar_id))
                .values(
                    status=AvatarStatus.SUBMITTED,
                    provider_endpoint=request.endpoint,
                    provider_request_id=request.request_id,
                    training_config=request.payload,
                    updated_at=self._clock.now(),
                )
                .execution_options(synchronize_session=False)
            )
        log.info("avatar.submitted", avatar_id=str(avatar_id), request_id=request.request_id)

    # --- recovery ----------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Drive stuck avatars on; purge photos past retention and abandoned drafts. Idempotent."""
        now = self._clock.now()
        handled = 0
        timeout_before = now - self.rules.training_timeout
        due = await self._due()
        for avatar_id, updated_at, first_try in due.pending:
            # A try that failed before reaching FAL keeps its first time: retries don't extend it.
            if (first_try or updated_at) <= timeout_before:
                await self._fail_unsubmitted(avatar_id, "timeout", "never submitted")
            else:
                await self._enqueue_training(avatar_id)  # the job was lost: the row says what to do
            handled += 1
        for row in due.training:
            if await self._poll(
                row.id, row.provider_endpoint, row.provider_request_id, row.submitted_at <= timeout_before
            ):
                handled += 1
        for avatar_id in due.finished:
            await self._purge_photos(avatar_id)
            handled += 1
        for avatar_id, user_id in due.drafts:
            async with unit_of_work(self._sessions) as session:
                discarded = await rows.discard_draft(
                    session,
                    storage=self._storage,
                    now=self._clock.now(),
                    user_id=user_id,
                    avatar_id=avatar_id,
                )
                locale = await user_locale(session, user_id)
            if discarded is None:
                continue
            handled += 1
            if discarded.status_message is not None:  # committed: its "Review and start" goes
                await self._events.draft_expired(
                    user_id=user_id, locale=locale, name=discarded.name, message_id=discarded.status_message
                )
        for avatar_id in due.unkept if self._trainer is not None else ():
            await self._queue_keep(avatar_id)
            handled += 1
        return handled

    async def _due(self) -> _Due:
        now = self._clock.now()
        poll_before = now - self.rules.poll_after
        async with self._sessions() as session:
            pending = await session.execute(
                select(Avatar.id, Avatar.updated_at, Avatar.submitted_at).where(
                    Avatar.status == AvatarStatus.PENDING, Avatar.updated_at <= poll_before
                )
            )
            training = await session.execute(
                select(
                    Avatar.id, Avatar.provider_endpoint, Avatar.provider_request_id, Avatar.submitted_at
                ).where(Avatar.status.in_(IN_TRAINING), Avatar.submitted_at <= poll_before)
            )
            finished = await session.scalars(
                select(Avatar.id).where(
                    Avatar.status.in_((AvatarStatus.READY, AvatarStatus.FAILED)),
                    Avatar.photos_deleted_at.is_(None),
                    Avatar.finished_at <= now - self.rules.photo_retention,
                )
            )
            drafts = await session.execute(
                select(Avatar.id, Avatar.user_id).where(
                    Avatar.status == AvatarStatus.DRAFT, Avatar.updated_at <= now - self.rules.draft_ttl
                )
            )
            # READY with no copy of the LoRA recorded: the process died before (or while) its
            # `keep_lora` job ran, or the job was lost. `poll_after` gives that job its time first.
            unkept = await session.scalars(
                select(Avatar.id).where(
                    Avatar.status == AvatarStatus.READY,
                    Avatar.lora_url.is_not(None),
                    Avatar.finished_at <= poll_before,
                    Avatar.training_config[LORA_KEY].as_string().is_(None),
                    Avatar.training_config[LORA_LOST].as_string().is_(None),
                )
            )
            return _Due(
                pending=list(pending.all()),
                training=list(training.all()),
                finished=list(finished.all()),
                drafts=list(drafts.all()),
                unkept=list(unkept.all()),
            )

    async def _poll(
        self, avatar_id: uuid.UUID, endpoint: str | None, request_id: str | None, timed_out: bool
    ) -> bool:
        """No webhook came: ask FAL. Past the timeout, cancel there and release here."""
        trainer = self._trainer
        if trainer is not None and endpoint and request_id:
            try:
                state = await trainer.state(endpoint=endpoint, request_id=request_id)
                if state is TrainingState.DONE:
                    output, error = await self._fetch_result(endpoint, request_id)
                    return await self._finish(
                        avatar_id, request_id=request_id, output=output, error=error, reason="provider"
                    )
                if state is TrainingState.UNKNOWN:
                    return await self._finish(
                        avatar_id,
                        request_id=request_id,
                        output=None,
                        error="unknown to FAL",
                        reason="provider",
                    )
                if state is TrainingState.RUNNING:
                    async with unit_of_work(self._sessions) as session:
                        await session.execute(
                            update(Avatar)
                            .where(Avatar.id == avatar_id, Avatar.status == AvatarStatus.SUBMITTED)
                            .values(status=AvatarStatus.TRAINING, updated_at=self._clock.now())
                        )
            except RemoteError as exc:
                log.warning("avatar.poll_failed", avatar_id=str(avatar_id), error=str(exc))
                if not timed_out:
                    return False
        if not timed_out:
            return False
        if trainer is not None and endpoint and request_id:
            try:
                await trainer.cancel(endpoint=endpoint, request_id=request_id)
            except RemoteError as exc:
                log.warning("avatar.cancel_failed", avatar_id=str(avatar_id), error=str(exc))
        return await self._finish(
            avatar_id, request_id=request_id, output=None, error="timeout", reason="timeout"
        )
