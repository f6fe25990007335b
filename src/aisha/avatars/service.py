"""The avatar rules users act on: drafts, the review, starting a training (a paid operation), the
gallery and deletion. The wizard's photos are `AvatarPhotos` (`photos.py`); the training's job
steps are `AvatarFlow` (`flow.py`, `outcomes.py`); this service builds both and keeps them as
`photos` and `flow`.

Starting a training is `PaidOperations.start`: the user's lock, then the avatar marked PENDING in
the update's transaction, then the `avatars.train` job queued once that commits. The credits are
held by the job, with the intent (SUBMITTING), before FAL hears of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars import rows
from aisha.avatars.errors import (
    AvatarNotFound,
    InvalidAvatarName,
    NotEnoughPhotos,
    TrainingUnavailable,
    WrongAvatarStatus,
)
from aisha.avatars.flow import AvatarFlow
from aisha.avatars.models import (
    Avatar,
    AvatarPhoto,
    AvatarRules,
    AvatarStatus,
    AvatarType,
    AvatarView,
    Review,
)
from aisha.avatars.photos import AvatarPhotos
from aisha.avatars.ports import AvatarEvents, JobFigures, Trainer
from aisha.avatars.rows import lora_prefix, photo_prefix
from aisha.avatars.validation import PhotoValidator
from aisha.billing.errors import InsufficientCredits
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.session import after_commit
from aisha.messaging import Messenger
from aisha.operations import PaidOperations
from aisha.remote import RemoteWebhook
from aisha.storage import ObjectStorage, StorageError

MAX_NAME_LENGTH = 64
# Waiting to be sent or trained: shown with a place in the queue.
QUEUED = (AvatarStatus.PENDING, AvatarStatus.SUBMITTING, AvatarStatus.SUBMITTED)


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidAvatarName(name)
    return name


class AvatarService:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        ledger: LedgerService,
        prices: PriceList,
        validator: PhotoValidator,
        trainer: Trainer | None,
        messenger: Messenger,
        notifier: AvatarEvents | None = None,
        rules: AvatarRules,
        operations: PaidOperations,
        enqueue_training: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_keep: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_photo: Callable[..., Awaitable[None]],
        metrics: JobFigures | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._trainer = trainer
        self._operations = operations
        self._enqueue_training = enqueue_training
        self.rules = rules
        self.photos = AvatarPhotos(
            sessions=sessions,
            clock=clock,
            storage=storage,
            validator=validator,
            messenger=messenger,
            events=notifier,
            rules=rules,
            enqueue_photo=enqueue_photo,
        )
        self.flow = AvatarFlow(
            sessions=sessions,
            clock=clock,
            storage=storage,
            ledger=ledger,
            prices=prices,
            trainer=trainer,
            events=notifier,
            rules=rules,
            enqueue_training=enqueue_training,
            enqueue_keep=enqueue_keep,
            metrics=metrics,
        )

    def tell_through(self, events: AvatarEvents) -> None:
        """Who tells the user (the bot's presenter): attached by the adapters, which own it."""
        self.photos.tell_through(events)
        self.flow.tell_through(events)

    # --- prices --------------------------------------------------------------------------------

    def price(self, avatar_type: AvatarType) -> int:
        return (
            self._prices.avatar_portrait if avatar_type is AvatarType.PORTRAIT else self._prices.avatar_style
        )

    @property
    def available(self) -> bool:
        return self._trainer is not None

    async def apply_webhook(self, *, avatar_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified FAL webhook for this avatar (see `AvatarFlow.apply_webhook`)."""
        return await self.flow.apply_webhook(avatar_id=avatar_id, webhook=webhook)

    # --- the wizard ----------------------------------------------------------------------------

    async def create_draft(
        self, *, session: AsyncSession, user_id: int, avatar_type: AvatarType, name: str
    ) -> Avatar:
        avatar = Avatar(
            user_id=user_id,
            type=avatar_type,
            status=AvatarStatus.DRAFT,
            name=_clean_name(name),
            trigger_phrase=rows.new_trigger_phrase(),
            price=self.price(avatar_type),
            training_config={},
            created_at=self._clock.now(),
            updated_at=self._clock.now(),
        )
        session.add(avatar)
        await session.flush()
        return avatar

    async def review(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> Review:
        avatar = await rows.owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        return Review(
            avatar_id=avatar.id,
            name=avatar.name,
            type=avatar.type,
            accepted=await rows.photo_count(session, avatar_id),
            price=avatar.price,
            balance=await self._ledger.get_balance(session=session, user_id=user_id),
        )

    async def open_review(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> tuple[Review, list[bytes]]:
        """The review of a draft with enough photos: its summary and its accepted photos, in the
        order they came. Raises NotEnoughPhotos, AvatarNotFound, WrongAvatarStatus."""
        summary = await self.review(session=session, user_id=user_id, avatar_id=avatar_id)
        if summary.accepted < self.rules.min_photos:
            raise NotEnoughPhotos(accepted=summary.accepted, required=self.rules.min_photos)
        photos = await self.photos.review_photos(session=session, user_id=user_id, avatar_id=avatar_id)
        return summary, photos

    async def start_training(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> Avatar:
        """The one way a draft is confirmed (the review's button, or "Continue" after a top-up):
        a paid operation. Raises Busy (another operation of the user is starting), and whatever
        `confirm` raises; nothing is written or queued then. After the commit the training job is
        queued and the wizard's status message loses its button (whoever holds its turn)."""

        async def begin() -> Avatar:
            return await self.confirm(session=session, user_id=user_id, avatar_id=avatar_id)

        async def enqueue(avatar: Avatar) -> None:
            await self._enqueue_training(avatar_id)
            await self.photos.refresh_upload_status(user_id=user_id, avatar_id=avatar_id)

        return await self._operations.start(session, user_id=user_id, begin=begin, enqueue=enqueue)

    async def confirm(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> Avatar:
        """Checks photos and balance, then marks the avatar PENDING (the intent); the training job
        is queued after the commit. Raises InsufficientCredits (nothing written) when the balance
        is short, NotEnoughPhotos, TrainingUnavailable, AvatarNotFound, WrongAvatarStatus."""
        avatar = await rows.locked(session, avatar_id, user_id)
        if avatar is None:
            raise AvatarNotFound(str(avatar_id))
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        if self._trainer is None:
            raise TrainingUnavailable("FAL_KEY is not set")
        accepted = await rows.photo_count(session, avatar_id)
        if accepted < self.rules.min_photos:
            raise NotEnoughPhotos(accepted=accepted, required=self.rules.min_photos)
        price = self.price(avatar.type)  # today's price, not the one when the wizard began
        balance = await self._ledger.get_balance(session=session, user_id=user_id)
        if balance < price:
            raise InsufficientCredits(balance=balance, required=price)
        avatar.price = price
        avatar.status = AvatarStatus.PENDING
        avatar.updated_at = self._clock.now()
        await session.flush()
        return avatar

    # --- gallery ---------------------------------------------------------------------------------

    async def list_avatars(self, *, session: AsyncSession, user_id: int) -> list[AvatarView]:
        avatars = (
            await session.scalars(
                select(Avatar)
                .where(Avatar.user_id == user_id, Avatar.status != AvatarStatus.DRAFT)
                .order_by(Avatar.created_at, Avatar.id)
            )
        ).all()
        photo_counts = await session.execute(
            select(AvatarPhoto.avatar_id, func.count())
            .join(Avatar, Avatar.id == AvatarPhoto.avatar_id)
            .where(Avatar.user_id == user_id)
            .group_by(AvatarPhoto.avatar_id)
        )
        counts: dict[uuid.UUID, int] = {row[0]: int(row[1]) for row in photo_counts}
        views = []
        for avatar in avatars:
            position = None
            if avatar.status in QUEUED:
                ahead = await session.scalar(
                    select(func.count())
                    .select_from(Avatar)
                    .where(Avatar.status.in_(QUEUED), Avatar.updated_at < avatar.updated_at)
                )
                position = 1 + int(ahead or 0)
            views.append(
                AvatarView(
                    id=avatar.id,
                    name=avatar.name,
                    type=avatar.type,
                    status=avatar.status,
                    is_main=avatar.is_main,
                    photos=counts.get(avatar.id, 0),
                    queue_position=position,
                )
            )
        return views

    async def get(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> AvatarView:
        for view in await self.list_avatars(session=session, user_id=user_id):
            if view.id == avatar_id:
                return view
        raise AvatarNotFound(str(avatar_id))

    async def set_main(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> None:
        avatar = await rows.owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.READY:
            raise WrongAvatarStatus(avatar.status.value)
        await session.execute(
            update(Avatar).where(Avatar.user_id == user_id, Avatar.id != avatar_id).values(is_main=False)
        )
        avatar.is_main = True
        await session.flush()

    async def rename(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID, name: str) -> str:
        avatar = await rows.owned(session, avatar_id, user_id)
        avatar.name = name = _clean_name(name)
        avatar.updated_at = self._clock.now()
        await session.flush()
        return name

    async def deletable(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> AvatarView:
        """The avatar a user is asked to confirm deleting; WrongAvatarStatus while it trains."""
        view = await self.get(session=session, user_id=user_id, avatar_id=avatar_id)
        if view.status not in (AvatarStatus.READY, AvatarStatus.FAILED):
            raise WrongAvatarStatus(view.status.value)
        return view

    async def delete(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> None:
        """Rows and files. An avatar in training can't go: its hold must resolve first."""
        avatar = await rows.locked(session, avatar_id, user_id)
        if avatar is None or avatar.status is AvatarStatus.DRAFT:
            raise AvatarNotFound(str(avatar_id))
        if avatar.status not in (AvatarStatus.READY, AvatarStatus.FAILED):
            raise WrongAvatarStatus(avatar.status.value)
        was_main = avatar.is_main
        await session.delete(avatar)
        await session.flush()
        # Storage is not called inside the caller's transaction: the files go after its commit.
        after_commit(session, lambda: self._storage.delete_prefix(photo_prefix(user_id, avatar_id)))
        after_commit(session, lambda: self._storage.delete_prefix(lora_prefix(user_id, avatar_id)))
        if was_main:
            successor = await session.scalar(
                select(Avatar)
                .where(Avatar.user_id == user_id, Avatar.status == AvatarStatus.READY)
                .order_by(Avatar.finished_at.desc())
                .limit(1)
            )
            if successor is not None:
                successor.is_main = True
                await session.flush()

    async def sample_photos(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID, limit: int = 3
    ) -> list[bytes]:
        await rows.owned(session, avatar_id, user_id)
        photos = []
        for key in await rows.photo_keys(session, avatar_id, limit=limit):
            try:
                photos.append(await self._storage.get(key))
            except StorageError:
                continue  # purged meanwhile
        return photos


__all__ = ["MAX_NAME_LENGTH", "AvatarService", "lora_prefix", "photo_prefix"]
