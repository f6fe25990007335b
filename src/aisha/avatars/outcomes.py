"""How a training ends: FAL's webhook or a poll settles it exactly once (READY with the credits
captured, or FAILED with them released), the user is told after the commit, the photos are
purged, and our copy of the LoRA is made (`avatars.keep_lora`).

Every outcome is a conditional UPDATE on the avatar's status written with its capture or
release, so it applies once however many webhooks, sweeps and processes race for it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars import rows
from aisha.avatars.errors import TrainingFailed
from aisha.avatars.models import (
    CONFIG_KEY,
    LORA_KEY,
    LORA_LOST,
    Avatar,
    AvatarPhoto,
    AvatarRules,
    AvatarStatus,
    TrainingOutput,
)
from aisha.avatars.ports import TRAIN_JOB, AvatarEvents, JobFigures, NoFigures, Trainer
from aisha.billing.errors import HoldAlreadyResolved, HoldNotFound
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.session import unit_of_work
from aisha.messaging import Tells
from aisha.remote import RemoteError, RemoteMalformedOutput, RemoteNotFound, RemoteWebhook
from aisha.storage import ObjectStorage
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

# Held and (perhaps) at FAL: only a webhook, a poll or the timeout moves these on.
IN_TRAINING = (AvatarStatus.SUBMITTING, AvatarStatus.SUBMITTED, AvatarStatus.TRAINING)


class AvatarOutcomes(Tells[AvatarEvents]):
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        ledger: LedgerService,
        prices: PriceList,
        trainer: Trainer | None,
        events: AvatarEvents | None = None,
        rules: AvatarRules,
        enqueue_training: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_keep: Callable[[uuid.UUID], Awaitable[None]],
        metrics: JobFigures | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._trainer = trainer
        self._told = events
        self.rules = rules
        self._enqueue_training = enqueue_training
        self._enqueue_keep = enqueue_keep
        self._metrics: JobFigures = metrics or NoFigures()

    async def _locked(
        self, session: AsyncSession, avatar_id: uuid.UUID, user_id: int | None = None
    ) -> Avatar | None:
        return await rows.locked(session, avatar_id, user_id)

    # --- outcomes --------------------------------------------------------------------------------

    async def apply_webhook(self, *, avatar_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified FAL webhook for this avatar. True if it changed something."""
        async with self._sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            if avatar is None or avatar.status not in IN_TRAINING:
                return False  # a repeated delivery, or an avatar deleted meanwhile
            known = avatar.provider_request_id
            endpoint = avatar.provider_endpoint or (
                self._trainer.endpoint(avatar.type) if self._trainer is not None else ""
            )
        # Only the signed request id counts; the URL's id just says where to look.
        if known is not None and known != webhook.request_id:
            log.warning("avatar.webhook_request_mismatch", avatar_id=str(avatar_id))
            return False
        output: TrainingOutput | None = None
        error: str | None = None
        if webhook.ok:
            try:
                if webhook.payload is None or self._trainer is None:
                    raise RemoteMalformedOutput(webhook.payload_error or "no payload")
                output = self._trainer.parse_output(webhook.payload)
            except RemoteMalformedOutput:
                # FAL couldn't put the output in the webhook: read it from the queue instead.
                try:
                    output, error = await self._fetch_result(endpoint, webhook.request_id)
                except RemoteError as exc:
                    # An outage, not the job's answer: the sweep polls FAL for this avatar later.
                    log.warning("avatar.result_unavailable", avatar_id=str(avatar_id), error=str(exc))
                    return False
        else:
            error = webhook.error or "training failed"
        return await self._finish(
            avatar_id, request_id=webhook.request_id, output=output, error=error, reason="provider"
        )

    async def _fetch_result(self, endpoint: str, request_id: str) -> tuple[TrainingOutput | None, str | None]:
        """(the LoRA, None), or (None, the error) when the training failed. An outage (RemoteError)
        propagates: the training may have succeeded, so the caller asks again later."""
        assert self._trainer is not None
        try:
            return await self._trainer.result(endpoint=endpoint, request_id=request_id), None
        except (TrainingFailed, RemoteMalformedOutput) as exc:
            return None, str(exc)

    async def _finish(
        self,
        avatar_id: uuid.UUID,
        *,
        request_id: str | None,
        output: TrainingOutput | None,
        error: str | None,
        reason: str,
    ) -> bool:
        """SUBMITTING/SUBMITTED/TRAINING → READY (capture) or FAILED (release), exactly once."""
        now = self._clock.now()
        conditions: list[Any] = [Avatar.id == avatar_id, Avatar.status.in_(IN_TRAINING)]
        values: dict[str, Any] = {"finished_at": now, "updated_at": now}
        if request_id is None:
            conditions.append(Avatar.provider_request_id.is_(None))
        else:
            # A submission whose answer was lost learns its request id from the signed webhook.
            conditions.append(
                or_(Avatar.provider_request_id == request_id, Avatar.provider_request_id.is_(None))
            )
            values["provider_request_id"] = request_id
        if output is not None:
            values |= {
                "status": AvatarStatus.READY,
                "lora_url": output.lora_url,
                "config_url": output.config_url,
            }
        else:
            values |= {"status": AvatarStatus.FAILED, "error": (error or reason)[:2000]}
        async with unit_of_work(self._sessions) as session:
            row = (
                await session.execute(
                    update(Avatar)
                    .where(*conditions)
                    .values(**values)
                    .returning(Avatar.user_id, Avatar.name, Avatar.hold_id, Avatar.price)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if row is None:
                return False  # another webhook, poll or sweep got here first
            if row.hold_id is not None and output is None:
                await self._release(session, avatar_id, row.hold_id)
            elif row.hold_id is not None:
                await self._capture(session, avatar_id, row.hold_id, row.price)
            if output is not None:
                await self._make_main_if_first(session, avatar_id, row.user_id)
            locale = await user_locale(session, row.user_id)
        log.info("avatar.finished", avatar_id=str(avatar_id), ready=output is not None, reason=reason)
        if output is not None:
            await self._queue_keep(avatar_id)
            await self._events.ready(user_id=row.user_id, locale=locale, name=row.name, avatar_id=avatar_id)
        else:
            await self._failed(user_id=row.user_id, locale=locale, name=row.name, reason=reason)
        await self._purge_if_due(avatar_id)
        return True

    async def _make_main_if_first(self, session: AsyncSession, avatar_id: uuid.UUID, user_id: int) -> None:
        has_main = await session.scalar(
            select(func.count())
            .select_from(Avatar)
            .where(
                Avatar.user_id == user_id,
                Avatar.is_main.is_(True),
                Avatar.status == AvatarStatus.READY,
                Avatar.id != avatar_id,
            )
        )
        if not has_main:
            await session.execute(update(Avatar).where(Avatar.id == avatar_id).values(is_main=True))

    async def _capture(
        self, session: AsyncSession, avatar_id: uuid.UUID, hold_id: uuid.UUID, price: int
    ) -> None:
        await self._resolve_hold(
            avatar_id,
            self._ledger.capture(
                session=session,
                hold_id=hold_id,
                amount=price,
                key=f"avatar:{avatar_id}:capture",
                description="avatars.ledger.trained",
            ),
        )

    async def _release(self, session: AsyncSession, avatar_id: uuid.UUID, hold_id: uuid.UUID) -> None:
        await self._resolve_hold(
            avatar_id,
            self._ledger.release(
                session=session,
                hold_id=hold_id,
                key=f"avatar:{avatar_id}:release",
                description="avatars.ledger.refund",
            ),
        )

    async def _resolve_hold(self, avatar_id: uuid.UUID, resolution: Awaitable[object]) -> None:
        try:
            await resolution
        except (HoldAlreadyResolved, HoldNotFound) as exc:
            # The hold expired first (HOLD_TTL_SECONDS shorter than the training took).
            log.error("avatar.hold_not_active", avatar_id=str(avatar_id), error=str(exc))

    async def _failed(self, *, user_id: int, locale: str, name: str, reason: str) -> None:
        """A training that ended failed: the user is told, the operator sees it counted."""
        await self._events.failed(user_id=user_id, locale=locale, name=name, reason=reason)
        await self._metrics.job_failed(TRAIN_JOB, reason)

    async def _fail_unsubmitted(self, avatar_id: uuid.UUID, reason: str, error: str) -> None:
        """PENDING → FAILED; a hold kept from a try that never reached FAL goes back."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            row = (
                await session.execute(
                    update(Avatar)
                    .where(Avatar.id == avatar_id, Avatar.status == AvatarStatus.PENDING)
                    .values(status=AvatarStatus.FAILED, error=error, finished_at=now, updated_at=now)
                    .returning(Avatar.user_id, Avatar.name, Avatar.hold_id)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if row is None:
                return
            if row.hold_id is not None:
                await self._release(session, avatar_id, row.hold_id)
            locale = await user_locale(session, row.user_id)
        await self._failed(user_id=row.user_id, locale=locale, name=row.name, reason=reason)
        await self._purge_if_due(avatar_id)

    # --- the photos, once training is over -------------------------------------------------------

    async def _purge_if_due(self, avatar_id: uuid.UUID) -> None:
        if self.rules.photo_retention <= timedelta(0):
            await self._purge_photos(avatar_id)

    async def _purge_photos(self, avatar_id: uuid.UUID) -> None:
        """Source photos are biometric data: once training is over they (and the archive) go.

        Files first, then the mark, each outside the other's transaction: a crash between them
        leaves the mark unset and the sweep deletes (nothing) again and sets it.
        """
        async with self._sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            if avatar is None or avatar.photos_deleted_at is not None:
                return
            if avatar.status not in (AvatarStatus.READY, AvatarStatus.FAILED):
                return
            user_id = avatar.user_id
        # Terminal: nothing adds photos to it any more.
        await self._storage.delete_prefix(rows.photo_prefix(user_id, avatar_id))
        async with unit_of_work(self._sessions) as session:
            await session.execute(delete(AvatarPhoto).where(AvatarPhoto.avatar_id == avatar_id))
            await session.execute(
                update(Avatar)
                .where(Avatar.id == avatar_id, Avatar.photos_deleted_at.is_(None))
                .values(photos_deleted_at=self._clock.now())
                .execution_options(synchronize_session=False)
            )
        log.info("avatar.photos_deleted", avatar_id=str(avatar_id))

    # --- our copy of the LoRA --------------------------------------------------------------------

    async def _queue_keep(self, avatar_id: uuid.UUID) -> None:
        try:
            await self._enqueue_keep(avatar_id)
        except Exception:
            # The row says the copy is missing: the sweep queues it again.
            log.warning("avatar.keep_enqueue_failed", avatar_id=str(avatar_id), exc_info=True)

    async def keep_lora(self, *, avatar_id: uuid.UUID) -> None:
        """The `avatars.keep_lora` job: copy a READY avatar's LoRA and config from FAL's CDN into
        our storage, so the avatar outlives FAL's media expiry. Idempotent.

        Files first, then the keys on the avatar in a transaction of its own: a crash between
        them leaves the avatar without a recorded copy, and the sweep queues this job again (the
        same keys are overwritten). An avatar deleted meanwhile gets its copy deleted.
        """
        async with self._sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            if avatar is None or avatar.status is not AvatarStatus.READY or not avatar.lora_url:
                return
            if LORA_KEY in avatar.training_config or LORA_LOST in avatar.training_config:
                return  # kept by an earlier run
            user_id, lora_url, config_url = avatar.user_id, avatar.lora_url, avatar.config_url
        trainer = self._trainer
        if trainer is None:
            return
        prefix = rows.lora_prefix(user_id, avatar_id)
        copies: dict[str, Any] = {CONFIG_KEY: None}
        try:
            lora = await trainer.download(lora_url)
        except RemoteNotFound:
            # FAL's file expired before ours was made: nothing left to copy, so stop trying.
            log.error("avatar.lora_lost", avatar_id=str(avatar_id))
            copies = {LORA_LOST: True}
        else:
            if config_url:
                with contextlib.suppress(RemoteNotFound):  # generation needs only the LoRA
                    config = await trainer.download(config_url)
                    await self._storage.put(f"{prefix}/config.json", config, content_type="application/json")
                    copies[CONFIG_KEY] = f"{prefix}/config.json"
            await self._storage.put(
                f"{prefix}/lora.safetensors", lora, content_type="application/octet-stream"
            )
            copies[LORA_KEY] = f"{prefix}/lora.safetensors"
        async with unit_of_work(self._sessions) as session:
            avatar = await self._locked(session, avatar_id)
            if avatar is not None:
                avatar.training_config = {**avatar.training_config, **copies}
        if avatar is None:
            await self._storage.delete_prefix(prefix)
            return
        log.info("avatar.lora_kept", avatar_id=str(avatar_id), kept=LORA_KEY in copies)
