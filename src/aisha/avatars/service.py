"""The avatar rules: drafts, photo intake, confirmation, training, outcomes, recovery, gallery.

Money and status move together: the credit hold is committed with the intent (SUBMITTING) before
FAL is called, FAL's request id in a transaction of its own after it answered; every outcome
(webhook, poll, timeout) is a conditional UPDATE on the avatar's status written with its capture
or release, so it applies exactly once however many webhooks, sweeps and processes race for it.

No outside call (FAL, storage, Telegram) runs inside a transaction that writes: downloads, photo
checks and zipping happen first, then a short transaction locks the avatar row and re-checks what
may have changed meanwhile; messages go out after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars.errors import (
    AvatarNotFound,
    InvalidAvatarName,
    NotEnoughPhotos,
    TrainingUnavailable,
    WrongAvatarStatus,
)
from aisha.avatars.models import (
    CONFIG_KEY,
    LORA_KEY,
    LORA_LOST,
    UPLOAD_KEY,
    Avatar,
    AvatarPhoto,
    AvatarStatus,
    AvatarType,
)
from aisha.avatars.training import Trainer, TrainingFailed, TrainingRequest, TrainingState
from aisha.avatars.validation import (
    PhotoValidator,
    PhotoVerdict,
    RejectReason,
    build_training_zip,
    hamming_distance,
    normalize_for_training,
)
from aisha.billing.errors import HoldAlreadyResolved, HoldNotFound, InsufficientCredits
from aisha.billing.prices import PriceList
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.session import after_commit, unit_of_work
from aisha.i18n import Translator
from aisha.jobs.metrics import JobMetrics
from aisha.messaging import Button, FileTooLarge, Messenger
from aisha.providers.fal import TrainingOutput, parse_training_result, webhook_url
from aisha.remote import (
    RemoteError,
    RemoteMalformedOutput,
    RemoteNotFound,
    RemoteRefused,
    RemoteUnavailable,
    RemoteWebhook,
)
from aisha.storage import ObjectStorage, StorageError
from aisha.storage.public import PublicRoute
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

TRAIN_JOB = "avatars.train"
KEEP_JOB = "avatars.keep_lora"
MAX_NAME_LENGTH = 64
# Held and (perhaps) at FAL: only a webhook, a poll or the timeout moves these on.
IN_TRAINING = (AvatarStatus.SUBMITTING, AvatarStatus.SUBMITTED, AvatarStatus.TRAINING)
# Waiting to be sent or trained: shown with a place in the queue.
QUEUED = (AvatarStatus.PENDING, AvatarStatus.SUBMITTING, AvatarStatus.SUBMITTED)
# Callback data the bot's avatar router answers (kept here so job messages carry the same buttons).
REVIEW_CALLBACK = "avw:review"
GENERATE_CALLBACK = "gen:new"  # handled by the generation feature
STATUS_LEASE = timedelta(seconds=60)  # a turn at the status message outlives a crashed holder no longer
REFUSED_SHOWN = 8  # the status lists the latest refused photos, and how many more there were
MAX_LINK_SECONDS = 7 * 24 * 3600  # the longest a presigned S3 URL may live
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic", "AVIF": "avif"}


@dataclass(frozen=True, slots=True)
class AvatarRules:
    min_photos: int = 10
    max_photos: int = 20
    training_timeout: timedelta = timedelta(hours=3)
    poll_after: timedelta = timedelta(minutes=15)
    photo_retention: timedelta = timedelta(0)
    draft_ttl: timedelta = timedelta(hours=24)
    duplicate_max_distance: int = 10
    # Where FAL posts its webhook; None: polling mode (the recovery sweep polls instead).
    public_base_url: str | None = None
    # How FAL gets the training archive (see storage/public.py).
    archive_route: PublicRoute = PublicRoute.PROVIDER_UPLOAD

    @property
    def archive_ttl(self) -> timedelta:
        """How long the archive's link (or FAL's copy) lives: the training's whole time limit, in
        which FAL may queue it and fetch it late, plus an hour; not longer (the archive is faces)."""
        return self.training_timeout + timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class PhotoOutcome:
    accepted: bool
    accepted_count: int
    reason: str | None = None  # a RejectReason value, or "limit"


@dataclass(frozen=True, slots=True)
class Review:
    avatar_id: uuid.UUID
    name: str
    type: AvatarType
    accepted: int
    price: int
    balance: int


@dataclass(frozen=True, slots=True)
class AvatarView:
    id: uuid.UUID
    name: str
    type: AvatarType
    status: AvatarStatus
    is_main: bool
    photos: int  # photos still stored
    queue_position: int | None  # among avatars waiting to be sent or trained


@dataclass(frozen=True, slots=True)
class _Claim:
    user_id: int
    name: str
    type: AvatarType
    trigger_phrase: str


@dataclass(frozen=True, slots=True)
class UploadStatus:
    """What the wizard's status message shows."""

    name: str
    type: AvatarType
    accepted: int
    refused: list[tuple[int, str | None, str]]  # (upload number, file name, RejectReason value or "limit")
    refused_count: int  # all refused so far; `refused` keeps the latest
    collecting: bool  # still a draft: more photos may come, and review is offered


@dataclass(frozen=True, slots=True)
class DraftDiscarded:
    """A discarded draft; `status_message`: its status message, whose button is still to go."""

    status_message: int | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    accepted: int
    hashes: list[str]
    shas: set[str]


@dataclass(frozen=True, slots=True)
class _Checked:
    """A photo checked outside any transaction: refused (`reason`), or stored at `key`."""

    reason: str | None
    key: str | None = None
    verdict: PhotoVerdict | None = None


def _upload_state(avatar: Avatar) -> dict[str, Any]:
    return dict(avatar.training_config.get(UPLOAD_KEY) or {})


def _has_upload_status(avatar: Avatar) -> bool:
    """A draft has one (from its first photo on); a confirmed avatar until training replaces it."""
    return avatar.status is AvatarStatus.DRAFT or UPLOAD_KEY in avatar.training_config


def _save_upload_state(avatar: Avatar, state: dict[str, Any]) -> None:
    avatar.training_config = {**avatar.training_config, UPLOAD_KEY: state}


def photo_prefix(user_id: int, avatar_id: uuid.UUID) -> str:
    return f"avatars/{user_id}/{avatar_id}"


def lora_prefix(user_id: int, avatar_id: uuid.UUID) -> str:
    """Our copy of the avatar's LoRA: kept apart from the photos, which are purged after training."""
    return f"loras/{user_id}/{avatar_id}"


def new_trigger_phrase() -> str:
    # A rare token the base model knows nothing about; unique per avatar (DB constraint too).
    return f"ohwx{secrets.token_hex(5)}"


class AvatarNotifier:
    """What jobs tell users, in their language, with the buttons that go with it."""

    def __init__(self, *, messenger: Messenger, translator: Translator) -> None:
        self._messenger = messenger
        self._translator = translator

    async def _send(
        self,
        user_id: int,
        text: str,
        *,
        buttons: list[list[Button]] | None = None,
        reply_to: int | None = None,
    ) -> int | None:
        try:
            return await self._messenger.send_text(user_id, text, buttons=buttons, reply_to=reply_to)
        except Exception:
            # The database already holds the truth; a blocked bot or a Telegram outage loses a message only.
            log.warning("avatar.notify_failed", user_id=user_id, exc_info=True)
            return None

    async def send(self, user_id: int, text: str, *, buttons: list[list[Button]] | None) -> int | None:
        return await self._send(user_id, text, buttons=buttons)

    async def edit(
        self, user_id: int, message_id: int, text: str, *, buttons: list[list[Button]] | None
    ) -> bool:
        try:
            await self._messenger.edit_text(user_id, message_id, text, buttons=buttons)
        except Exception:
            log.warning("avatar.status_edit_failed", user_id=user_id, exc_info=True)
            return False
        return True

    async def remove_buttons(self, user_id: int, message_id: int) -> None:
        try:
            await self._messenger.remove_buttons(user_id, message_id)
        except Exception:
            log.warning("avatar.status_edit_failed", user_id=user_id, exc_info=True)

    def upload_status(
        self, *, locale: str, status: UploadStatus, min_photos: int, max_photos: int
    ) -> tuple[str, list[list[Button]] | None]:
        """The wizard's status message: accepted so far, what to do next, the refused ones."""
        t = self._translator.bind(locale)
        count = status.accepted
        lines = [
            t("avatars.upload.title", name=_quote(status.name)),
            t("avatars.upload.accepted", count=count, min=min_photos, max=max_photos),
        ]
        buttons = None
        if status.collecting:
            if count < min_photos:
                lines.append(t("avatars.upload.need_more", count=min_photos - count))
            elif count < max_photos:
                lines.append(t("avatars.upload.enough", count=max_photos - count))
            else:
                lines.append(t("avatars.upload.full"))
            if count >= min_photos:
                buttons = [[Button(t("avatars.button.review"), REVIEW_CALLBACK)]]
        if status.refused:
            lines += ["", t("avatars.upload.refused", count=status.refused_count)]
            hidden = status.refused_count - min(len(status.refused), REFUSED_SHOWN)
            if hidden > 0:  # the earliest ones
                lines.append(t("avatars.upload.refused_more", count=hidden))
            # In the order they were sent (checks end in any order).
            for number, file_name, reason in sorted(status.refused, key=lambda r: r[0])[-REFUSED_SHOWN:]:
                label = _quote(file_name) if file_name else t("avatars.upload.photo_n", n=number)
                lines.append(
                    t("avatars.upload.refused_line", label=label, reason=t(f"avatars.refused.{reason}"))
                )
        return "\n".join(lines), buttons

    async def ready(self, *, user_id: int, locale: str, name: str, avatar_id: uuid.UUID) -> None:
        t = self._translator.bind(locale)
        # The button carries the avatar: it creates with this one, not the main one.
        create = Button(t("avatars.button.generate"), f"{GENERATE_CALLBACK}:{avatar_id.hex}")
        await self._send(user_id, t("avatars.ready", name=_quote(name)), buttons=[[create]])

    async def failed(self, *, user_id: int, locale: str, name: str, reason: str) -> None:
        t = self._translator.bind(locale)
        await self._send(
            user_id, t("avatars.failed", name=_quote(name), reason=t(f"avatars.failure.{reason}"))
        )


def _quote(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
        notifier: AvatarNotifier,
        rules: AvatarRules,
        enqueue_training: Callable[[uuid.UUID], Awaitable[None]],
        enqueue_keep: Callable[[uuid.UUID], Awaitable[None]],
        metrics: JobMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._ledger = ledger
        self._prices = prices
        self._validator = validator
        self._trainer = trainer
        self._messenger = messenger
        self._notifier = notifier
        self.rules = rules
        self._enqueue_training = enqueue_training
        self._enqueue_keep = enqueue_keep
        self._metrics = metrics or JobMetrics()

    # --- prices --------------------------------------------------------------------------------

    def price(self, avatar_type: AvatarType) -> int:
        return (
            self._prices.avatar_portrait if avatar_type is AvatarType.PORTRAIT else self._prices.avatar_style
        )

    @property
    def available(self) -> bool:
        return self._trainer is not None

    # --- the wizard ----------------------------------------------------------------------------

    async def create_draft(
        self, *, session: AsyncSession, user_id: int, avatar_type: AvatarType, name: str
    ) -> Avatar:
        name = " ".join(name.split())
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidAvatarName(name)
        avatar = Avatar(
            user_id=user_id,
            type=avatar_type,
            status=AvatarStatus.DRAFT,
            name=name,
            trigger_phrase=new_trigger_phrase(),
            price=self.price(avatar_type),
            training_config={},
            created_at=self._clock.now(),
            updated_at=self._clock.now(),
        )
        session.add(avatar)
        await session.flush()
        return avatar

    async def discard_draft(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> DraftDiscarded | None:
        """/cancel: the draft, its photo rows and its files go. None if there was no draft.

        The status message's button is the caller's to remove, unless a photo job holds the turn
        at that message: that one removes it when it finds the draft gone.
        """
        avatar = await self._locked(session, avatar_id, user_id)
        if avatar is None or avatar.status is not AvatarStatus.DRAFT:
            return None
        state = _upload_state(avatar)
        held = self._turn_taken(state)
        button_left = state.get("message_id") if state.get("button") and not held else None
        await session.delete(avatar)
        await session.flush()
        # The files go once the row is gone for good (a photo job then finds no draft and adds none).
        after_commit(session, lambda: self._storage.delete_prefix(photo_prefix(user_id, avatar_id)))
        return DraftDiscarded(status_message=button_left)

    async def number_upload(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> int | None:
        """The next upload's number in this draft ("photo 3" in the status), in the order the
        updates came; None when there is no draft to add to."""
        avatar = await self._locked(session, avatar_id, user_id)
        if avatar is None or avatar.status is not AvatarStatus.DRAFT:
            return None
        state = _upload_state(avatar)
        state["received"] = number = int(state.get("received", 0)) + 1
        _save_upload_state(avatar, state)
        await session.flush()
        return number

    async def intake_photo(
        self,
        *,
        user_id: int,
        avatar_id: uuid.UUID,
        file_id: str,
        file_size: int | None = None,
        number: int = 0,
        file_name: str | None = None,
    ) -> PhotoOutcome | None:
        """The `avatars.photo` job: download, check, keep the photo or note why not, then bring
        the wizard's one status message up to date.

        None when the draft is gone (cancelled or confirmed meanwhile): nothing to say.
        """
        snapshot = await self._snapshot(user_id, avatar_id)
        if snapshot is None:
            return None
        checked: _Checked
        if snapshot.accepted >= self.rules.max_photos:
            checked = _Checked(reason="limit")
        elif file_size is not None and file_size > self._validator.thresholds.max_file_bytes:
            # Known from the message: not fetched at all (a local Bot API server takes 2 GB files).
            checked = _Checked(reason=RejectReason.TOO_LARGE.value)
        else:
            checked = await self._check(user_id, avatar_id, file_id, snapshot)
        label = [number, file_name]
        outcome = await self._settle(user_id, avatar_id, checked, label)
        if outcome is not None:
            await self.refresh_upload_status(user_id=user_id, avatar_id=avatar_id)
        return outcome

    async def _snapshot(self, user_id: int, avatar_id: uuid.UUID) -> _Snapshot | None:
        async with self._sessions() as session:
            avatar = await session.scalar(
                select(Avatar).where(Avatar.id == avatar_id, Avatar.user_id == user_id)
            )
            if avatar is None or avatar.status is not AvatarStatus.DRAFT:
                return None
            rows = (
                await session.execute(
                    select(AvatarPhoto.sha256, AvatarPhoto.perceptual_hash).where(
                        AvatarPhoto.avatar_id == avatar_id
                    )
                )
            ).all()
        return _Snapshot(
            accepted=len(rows),
            hashes=[r.perceptual_hash for r in rows],
            shas={r.sha256 for r in rows},
        )

    async def _check(self, user_id: int, avatar_id: uuid.UUID, file_id: str, snapshot: _Snapshot) -> _Checked:
        """Download and check the photo, and store it if it passed; no transaction is open."""
        with tempfile.TemporaryDirectory(prefix="aisha-photo-") as folder:
            path = Path(folder) / "photo"
            try:
                await self._messenger.download(
                    file_id, path, max_bytes=self._validator.thresholds.max_file_bytes
                )
            except FileTooLarge:
                return _Checked(reason=RejectReason.TOO_LARGE.value)
            data = await asyncio.to_thread(path.read_bytes)
        # CPU work in the validator's pool.
        verdict = await self._validator.validate_async(
            data, accepted_hashes=snapshot.hashes, accepted_sha256=snapshot.shas
        )
        if not verdict.accepted:
            assert verdict.reason is not None
            return _Checked(reason=verdict.reason.value)
        assert verdict.perceptual_hash is not None
        extension = _FORMAT_EXTENSIONS.get(str(verdict.metrics.get("format", "")).upper(), "jpg")
        key = f"{photo_prefix(user_id, avatar_id)}/photos/{verdict.sha256}.{extension}"
        # The file first. Its name is its content: the same photo sent twice at once writes the
        # same file, and a refused one is removed after the commit unless an accepted photo has
        # the same content (so the same file).
        await self._storage.put(key, data, content_type=f"image/{extension}")
        return _Checked(reason=None, key=key, verdict=verdict)

    async def _settle(
        self, user_id: int, avatar_id: uuid.UUID, checked: _Checked, label: list[Any]
    ) -> PhotoOutcome | None:
        """Keep the photo, or note it refused, under the draft's lock."""
        async with unit_of_work(self._sessions) as session:
            avatar = await self._locked(session, avatar_id, user_id)
            # Photos checked in parallel: only now, under the lock, is the set of accepted ones final.
            rows = (
                await session.execute(
                    select(AvatarPhoto.sha256, AvatarPhoto.perceptual_hash).where(
                        AvatarPhoto.avatar_id == avatar_id
                    )
                )
            ).all()
            verdict = checked.verdict
            key = checked.key
            # A stored file not kept goes after the commit, unless an accepted photo is the same
            # content (so the same file).
            same_kept = verdict is not None and any(r.sha256 == verdict.sha256 for r in rows)
            drop_file = key is not None and not same_kept
            if avatar is None or avatar.status is not AvatarStatus.DRAFT:
                if drop_file and key is not None:
                    after_commit(session, lambda: self._storage.delete(key))
                return None  # cancelled or confirmed meanwhile
            reason = checked.reason
            if reason is None and len(rows) >= self.rules.max_photos:
                reason = "limit"
            elif reason is None:
                assert verdict is not None and verdict.perceptual_hash is not None
                if any(
                    r.sha256 == verdict.sha256
                    or hamming_distance(r.perceptual_hash, verdict.perceptual_hash)
                    <= self.rules.duplicate_max_distance
                    for r in rows
                ):
                    reason = RejectReason.DUPLICATE.value
            avatar.updated_at = self._clock.now()  # the draft's time-to-live counts from the last photo
            if reason is None:
                assert verdict is not None and key is not None and verdict.perceptual_hash
                session.add(
                    AvatarPhoto(
                        avatar_id=avatar_id,
                        storage_key=key,
                        sha256=verdict.sha256,
                        perceptual_hash=verdict.perceptual_hash,
                        size_bytes=verdict.size_bytes,
                        width=verdict.width or 0,
                        height=verdict.height or 0,
                        metrics=verdict.metrics,
                        created_at=self._clock.now(),
                    )
                )
                return PhotoOutcome(True, len(rows) + 1)
            state = _upload_state(avatar)
            # The latest few are kept (a spare for jobs ending out of order), and how many in all.
            state["refused"] = [*state.get("refused", []), [*label, reason]][-2 * REFUSED_SHOWN :]
            state["refused_count"] = int(state.get("refused_count", 0)) + 1
            _save_upload_state(avatar, state)
            if drop_file and key is not None:
                after_commit(session, lambda: self._storage.delete(key))
            return PhotoOutcome(False, len(rows), reason)

    # --- the wizard's one status message -----------------------------------------------------------
    #
    # Photo jobs run at once, in several processes; each one, after its photo is committed, asks
    # for the status message to be brought up to date. One of them at a time holds the turn (a
    # lease on the draft row) and edits; the others only mark the status dirty, and the holder
    # reads it again before giving the turn back. So one message is ever sent, edits never cross
    # at Telegram, and the last edit shows the state after the last commit. An edit that would
    # change nothing is not made (Telegram refuses it).

    async def refresh_upload_status(self, *, user_id: int, avatar_id: uuid.UUID) -> None:
        async with unit_of_work(self._sessions) as session:
            avatar = await self._locked(session, avatar_id, user_id)
            if avatar is None or not _has_upload_status(avatar):
                return
            state = _upload_state(avatar)
            mine = not self._turn_taken(state)
            if mine:
                state["lease"] = (self._clock.now() + STATUS_LEASE).isoformat()
            else:
                state["dirty"] = True
            _save_upload_state(avatar, state)
        if mine:
            await self._show_upload_status(
                user_id, avatar_id, message_id=state.get("message_id"), with_button=bool(state.get("button"))
            )

    def _turn_taken(self, state: dict[str, Any]) -> bool:
        lease = state.get("lease")
        return isinstance(lease, str) and datetime.fromisoformat(lease) > self._clock.now()

    async def _show_upload_status(
        self, user_id: int, avatar_id: uuid.UUID, *, message_id: int | None, with_button: bool
    ) -> None:
        """Holding the turn: show the status until nobody marked it dirty meanwhile.

        `message_id` and `with_button`: the message as this turn found it. A draft that ends
        during the turn (cancelled, or its training began) leaves its button to this turn.
        """
        while True:
            async with unit_of_work(self._sessions) as session:
                avatar = await self._locked(session, avatar_id, user_id)
                if avatar is not None and _has_upload_status(avatar):
                    state = _upload_state(avatar)
                    state["dirty"] = False
                    _save_upload_state(avatar, state)
                    status = UploadStatus(
                        name=avatar.name,
                        type=avatar.type,
                        accepted=await self._photo_count(session, avatar_id),
                        refused=[(int(n or 0), name, str(why)) for n, name, why in state.get("refused", [])],
                        refused_count=int(state.get("refused_count", 0)),
                        collecting=avatar.status is AvatarStatus.DRAFT,
                    )
                    locale = await user_locale(session, user_id)
            if avatar is None or not _has_upload_status(avatar):
                break  # cancelled, or training took the row on
            message_id, shown = state.get("message_id"), state.get("shown")
            text, buttons = self._notifier.upload_status(
                locale=locale,
                status=status,
                min_photos=self.rules.min_photos,
                max_photos=self.rules.max_photos,
            )
            digest = hashlib.sha256(repr((text, buttons)).encode()).hexdigest()[:16]
            if message_id is None and status.collecting:
                message_id = await self._notifier.send(user_id, text, buttons=buttons)
                if message_id is not None:
                    shown, with_button = digest, bool(buttons)
            elif (
                message_id is not None
                and digest != shown
                and await self._notifier.edit(user_id, message_id, text, buttons=buttons)
            ):
                shown, with_button = digest, bool(buttons)
            async with unit_of_work(self._sessions) as session:
                avatar = await self._locked(session, avatar_id, user_id)
                if avatar is not None and UPLOAD_KEY in avatar.training_config:
                    state = _upload_state(avatar)
                    state |= {"message_id": message_id, "shown": shown, "button": with_button}
                    if not state.get("dirty"):
                        state["lease"] = None
                    _save_upload_state(avatar, state)
            if avatar is None or UPLOAD_KEY not in avatar.training_config:
                break  # cancelled, or training took the row on
            if not state.get("dirty"):
                return
        if message_id is not None and with_button:
            # The draft ended during this turn (/cancel left its button to the turn's holder).
            await self._notifier.remove_buttons(user_id, message_id)

    async def review_photos(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> list[bytes]:
        """The draft's accepted photos, in the order they came, for the review."""
        avatar = await self._owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        keys = (
            await session.scalars(
                select(AvatarPhoto.storage_key)
                .where(AvatarPhoto.avatar_id == avatar_id)
                .order_by(AvatarPhoto.created_at, AvatarPhoto.id)
            )
        ).all()
        photos = []
        for key in keys:
            with contextlib.suppress(StorageError):  # removed meanwhile (/cancel)
                photos.append(await self._storage.get(key))
        return photos

    async def review(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> Review:
        avatar = await self._owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        return Review(
            avatar_id=avatar.id,
            name=avatar.name,
            type=avatar.type,
            accepted=await self._photo_count(session, avatar_id),
            price=avatar.price,
            balance=await self._ledger.get_balance(session=session, user_id=user_id),
        )

    async def confirm(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> Avatar:
        """Checks photos and balance, then marks the avatar PENDING; the caller enqueues training
        after the commit. Raises InsufficientCredits (nothing written) when the balance is short."""
        avatar = await self._locked(session, avatar_id, user_id)
        if avatar is None:
            raise AvatarNotFound(str(avatar_id))
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        if self._trainer is None:
            raise TrainingUnavailable("FAL_KEY is not set")
        accepted = await self._photo_count(session, avatar_id)
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
            keys = (
                await session.scalars(
                    select(AvatarPhoto.storage_key)
                    .where(AvatarPhoto.avatar_id == avatar_id)
                    .order_by(AvatarPhoto.created_at, AvatarPhoto.id)
                )
            ).all()
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
        webhook = None
        if self.rules.public_base_url:
            webhook = webhook_url(self.rules.public_base_url, kind="avatar", row_id=avatar_id)
        try:
            request = await trainer.submit(
                avatar_type=claim.type,
                images_url=images_url,
                trigger_phrase=claim.trigger_phrase,
                webhook_url=webhook,
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
            archive_key = f"{photo_prefix(user_id, avatar_id)}/training.zip"
            await self._storage.put(archive_key, archive, content_type="application/zip")
            return await self._storage.url(archive_key, expires_in=min(ttl, MAX_LINK_SECONDS))
        # No public address at all: FAL's own storage, expiring once training is over.
        try:
            return await trainer.upload_archive(archive, expires_in=ttl)
        except RemoteError as error:
            log.error("avatar.archive_upload_failed", avatar_id=str(avatar_id), error=str(error))
            await self._fail_unsubmitted(avatar_id, "unavailable", "the archive could not reach FAL")
            return None

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
                .where(
                    Avatar.id == avatar_id,
                    Avatar.status == AvatarStatus.SUBMITTING,
                    Avatar.provider_request_id.is_(None),
                )
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
                .where(
                    Avatar.id == avatar_id,
                    Avatar.status == AvatarStatus.SUBMITTING,
                    Avatar.provider_request_id.is_(None),
                )
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

    async def _archive(self, keys: Sequence[str]) -> bytes:
        items: list[tuple[str, bytes]] = []
        for index, key in enumerate(keys, start=1):
            data = await self._storage.get(key)
            normalized = await asyncio.to_thread(normalize_for_training, data)
            items.append((f"{index:02d}.jpg", normalized))
        return await asyncio.to_thread(build_training_zip, items)

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

    async def _release(self, session: AsyncSession, avatar_id: uuid.UUID, hold_id: uuid.UUID) -> None:
        try:
            await self._ledger.release(
                session=session,
                hold_id=hold_id,
                key=f"avatar:{avatar_id}:release",
                description="avatars.ledger.refund",
            )
        except (HoldAlreadyResolved, HoldNotFound) as exc:
            # The hold expired first (HOLD_TTL_SECONDS shorter than the training took).
            log.error("avatar.hold_not_active", avatar_id=str(avatar_id), error=str(exc))

    async def _failed(self, *, user_id: int, locale: str, name: str, reason: str) -> None:
        """A training that ended failed: the user is told, the operator sees it counted."""
        await self._notifier.failed(user_id=user_id, locale=locale, name=name, reason=reason)
        await self._metrics.job_failed(TRAIN_JOB, reason)

    # --- outcomes --------------------------------------------------------------------------------

    async def apply_webhook(self, *, avatar_id: uuid.UUID, webhook: RemoteWebhook) -> bool:
        """A verified FAL webhook for this avatar. True if it changed something."""
        async with self._sessions() as session:
            avatar = await session.get(Avatar, avatar_id)
            if avatar is None or avatar.status not in IN_TRAINING:
                return False  # a repeated delivery, or an avatar deleted meanwhile
            known = avatar.provider_request_id
            endpoint = avatar.provider_endpoint or self._endpoint_hint(avatar.type)
        # Only the signed request id counts; the URL's id just says where to look.
        if known is not None and known != webhook.request_id:
            log.warning("avatar.webhook_request_mismatch", avatar_id=str(avatar_id))
            return False
        output: TrainingOutput | None = None
        error: str | None = None
        if webhook.ok:
            try:
                if webhook.payload is None:
                    raise RemoteMalformedOutput(webhook.payload_error or "no payload")
                output = parse_training_result(webhook.payload)
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

    def _endpoint_hint(self, avatar_type: AvatarType) -> str:
        endpoint = getattr(self._trainer, "endpoint", None)
        return str(endpoint(avatar_type)) if callable(endpoint) else ""

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
                try:
                    await self._ledger.capture(
                        session=session,
                        hold_id=row.hold_id,
                        amount=row.price,
                        key=f"avatar:{avatar_id}:capture",
                        description="avatars.ledger.trained",
                    )
                except (HoldAlreadyResolved, HoldNotFound) as exc:
                    # The hold expired first (HOLD_TTL_SECONDS shorter than the training took).
                    log.error("avatar.hold_not_active", avatar_id=str(avatar_id), error=str(exc))
            if output is not None:
                has_main = await session.scalar(
                    select(func.count())
                    .select_from(Avatar)
                    .where(
                        Avatar.user_id == row.user_id,
                        Avatar.is_main.is_(True),
                        Avatar.status == AvatarStatus.READY,
                        Avatar.id != avatar_id,
                    )
                )
                if not has_main:
                    await session.execute(update(Avatar).where(Avatar.id == avatar_id).values(is_main=True))
            locale = await user_locale(session, row.user_id)
        log.info("avatar.finished", avatar_id=str(avatar_id), ready=output is not None, reason=reason)
        if output is not None:
            await self._queue_keep(avatar_id)
            await self._notifier.ready(user_id=row.user_id, locale=locale, name=row.name, avatar_id=avatar_id)
        else:
            await self._failed(user_id=row.user_id, locale=locale, name=row.name, reason=reason)
        await self._purge_if_due(avatar_id)
        return True

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
        prefix = lora_prefix(user_id, avatar_id)
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

    # --- recovery ----------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Drive stuck avatars on; purge photos past retention and abandoned drafts. Idempotent."""
        now = self._clock.now()
        handled = 0
        poll_before = now - self.rules.poll_after
        timeout_before = now - self.rules.training_timeout
        async with self._sessions() as session:
            pending = (
                await session.execute(
                    select(Avatar.id, Avatar.updated_at, Avatar.submitted_at).where(
                        Avatar.status == AvatarStatus.PENDING, Avatar.updated_at <= poll_before
                    )
                )
            ).all()
            training = (
                await session.execute(
                    select(
                        Avatar.id, Avatar.provider_endpoint, Avatar.provider_request_id, Avatar.submitted_at
                    ).where(Avatar.status.in_(IN_TRAINING), Avatar.submitted_at <= poll_before)
                )
            ).all()
            finished = (
                await session.scalars(
                    select(Avatar.id).where(
                        Avatar.status.in_((AvatarStatus.READY, AvatarStatus.FAILED)),
                        Avatar.photos_deleted_at.is_(None),
                        Avatar.finished_at <= now - self.rules.photo_retention,
                    )
                )
            ).all()
            drafts = (
                await session.execute(
                    select(Avatar.id, Avatar.user_id).where(
                        Avatar.status == AvatarStatus.DRAFT, Avatar.updated_at <= now - self.rules.draft_ttl
                    )
                )
            ).all()
            # READY with no copy of the LoRA recorded: the process died before (or while) its
            # `keep_lora` job ran, or the job was lost. `poll_after` gives that job its time first.
            unkept = (
                await session.scalars(
                    select(Avatar.id).where(
                        Avatar.status == AvatarStatus.READY,
                        Avatar.lora_url.is_not(None),
                        Avatar.finished_at <= poll_before,
                        Avatar.training_config[LORA_KEY].as_string().is_(None),
                        Avatar.training_config[LORA_LOST].as_string().is_(None),
                    )
                )
            ).all()
        for avatar_id, updated_at, first_try in pending:
            # A try that failed before reaching FAL keeps its first time: retries don't extend it.
            if (first_try or updated_at) <= timeout_before:
                await self._fail_unsubmitted(avatar_id, "timeout", "never submitted")
            else:
                await self._enqueue_training(avatar_id)  # the job was lost: the row says what to do
            handled += 1
        for row in training:
            if await self._poll(
                row.id, row.provider_endpoint, row.provider_request_id, row.submitted_at <= timeout_before
            ):
                handled += 1
        for avatar_id in finished:
            await self._purge_photos(avatar_id)
            handled += 1
        for avatar_id, user_id in drafts:
            async with unit_of_work(self._sessions) as session:
                if await self.discard_draft(session=session, user_id=user_id, avatar_id=avatar_id):
                    handled += 1
        for avatar_id in unkept if self._trainer is not None else ():
            await self._queue_keep(avatar_id)
            handled += 1
        return handled

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
        await self._storage.delete_prefix(photo_prefix(user_id, avatar_id))
        async with unit_of_work(self._sessions) as session:
            await session.execute(delete(AvatarPhoto).where(AvatarPhoto.avatar_id == avatar_id))
            await session.execute(
                update(Avatar)
                .where(Avatar.id == avatar_id, Avatar.photos_deleted_at.is_(None))
                .values(photos_deleted_at=self._clock.now())
                .execution_options(synchronize_session=False)
            )
        log.info("avatar.photos_deleted", avatar_id=str(avatar_id))

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
                position = 1 + int(
                    await session.scalar(
                        select(func.count())
                        .select_from(Avatar)
                        .where(
                            Avatar.status.in_(QUEUED),
                            Avatar.updated_at < avatar.updated_at,
                        )
                    )
                    or 0
                )
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
        avatar = await self._owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.READY:
            raise WrongAvatarStatus(avatar.status.value)
        await session.execute(
            update(Avatar).where(Avatar.user_id == user_id, Avatar.id != avatar_id).values(is_main=False)
        )
        avatar.is_main = True
        await session.flush()

    async def rename(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID, name: str) -> str:
        avatar = await self._owned(session, avatar_id, user_id)
        name = " ".join(name.split())
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InvalidAvatarName(name)
        avatar.name = name
        avatar.updated_at = self._clock.now()
        await session.flush()
        return name

    async def delete(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> None:
        """Rows and files. An avatar in training can't go: its hold must resolve first."""
        avatar = await self._locked(session, avatar_id, user_id)
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
        await self._owned(session, avatar_id, user_id)
        keys = (
            await session.scalars(
                select(AvatarPhoto.storage_key)
                .where(AvatarPhoto.avatar_id == avatar_id)
                .order_by(AvatarPhoto.created_at, AvatarPhoto.id)
                .limit(limit)
            )
        ).all()
        photos = []
        for key in keys:
            try:
                photos.append(await self._storage.get(key))
            except StorageError:
                continue  # purged meanwhile
        return photos

    # --- helpers -----------------------------------------------------------------------------------

    async def _owned(self, session: AsyncSession, avatar_id: uuid.UUID, user_id: int) -> Avatar:
        avatar = await session.scalar(select(Avatar).where(Avatar.id == avatar_id, Avatar.user_id == user_id))
        if avatar is None:
            raise AvatarNotFound(str(avatar_id))
        return avatar

    async def _locked(
        self, session: AsyncSession, avatar_id: uuid.UUID, user_id: int | None = None
    ) -> Avatar | None:
        query = select(Avatar).where(Avatar.id == avatar_id).with_for_update()
        if user_id is not None:
            query = query.where(Avatar.user_id == user_id)
        avatar: Avatar | None = await session.scalar(query.execution_options(populate_existing=True))
        return avatar

    async def _photo_count(self, session: AsyncSession, avatar_id: uuid.UUID) -> int:
        return int(
            await session.scalar(
                select(func.count()).select_from(AvatarPhoto).where(AvatarPhoto.avatar_id == avatar_id)
            )
            or 0
        )


__all__ = [
    "GENERATE_CALLBACK",
    "KEEP_JOB",
    "REVIEW_CALLBACK",
    "AvatarNotifier",
    "AvatarRules",
    "AvatarService",
    "AvatarView",
    "DraftDiscarded",
    "PhotoOutcome",
    "Review",
    "UploadStatus",
    "lora_prefix",
    "photo_prefix",
]
