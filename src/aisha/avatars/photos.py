"""The wizard's photos: numbering an upload, the `avatars.photo` job (download, check, keep or
refuse), the one status message the wizard keeps up to date, and the review's photos.

No outside call (Telegram, storage) runs inside a transaction that writes: the download, the
checks and the file come first; then a short transaction locks the draft and re-checks what may
have changed meanwhile (photos checked in parallel); messages go out after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aisha.avatars import rows
from aisha.avatars.errors import WrongAvatarStatus
from aisha.avatars.models import (
    UPLOAD_KEY,
    Avatar,
    AvatarPhoto,
    AvatarRules,
    AvatarStatus,
    DraftDiscarded,
    PhotoOutcome,
    UploadStatus,
)
from aisha.avatars.ports import AvatarEvents
from aisha.avatars.validation import PhotoValidator, PhotoVerdict, RejectReason, hamming_distance
from aisha.clock import Clock
from aisha.db.session import after_commit, unit_of_work
from aisha.messaging import FileTooLarge, Messenger, Tells
from aisha.storage import ObjectStorage, StorageError
from aisha.users.service import user_locale

log = structlog.get_logger(__name__)

STATUS_LEASE = timedelta(seconds=60)  # a turn at the status message outlives a crashed holder no longer
REFUSED_SHOWN = 8  # the status lists the latest refused photos, and how many more there were
_FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic", "AVIF": "avif"}


@dataclass(frozen=True, slots=True)
class PhotoUpload:
    """A photo sent to the wizard, as the job gets it: only the file's id, size and name travel."""

    file_id: str
    file_size: int | None = None
    file_name: str | None = None


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


class AvatarPhotos(Tells[AvatarEvents]):
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        storage: ObjectStorage,
        validator: PhotoValidator,
        messenger: Messenger,
        events: AvatarEvents | None = None,
        rules: AvatarRules,
        enqueue_photo: Callable[..., Awaitable[None]],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._storage = storage
        self._validator = validator
        self._messenger = messenger
        self._told = events
        self.rules = rules
        self._enqueue_photo = enqueue_photo

    async def receive(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID, upload: PhotoUpload
    ) -> bool:
        """A photo sent to the wizard: numbered ("photo 3" in the status) in the order the updates
        came, and handed to the `avatars.photo` job once this update commits (until then it holds
        the draft's row). False when there is no draft to add to (expired, or gone)."""
        number = await self.number_upload(session=session, user_id=user_id, avatar_id=avatar_id)
        if number is None:
            return False
        after_commit(
            session,
            lambda: self._enqueue_photo(
                user_id=user_id,
                avatar_id=str(avatar_id),
                file_id=upload.file_id,
                file_size=upload.file_size,
                number=number,
                file_name=upload.file_name,
            ),
        )
        return True

    async def number_upload(self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID) -> int | None:
        """The next upload's number in this draft; None when there is no draft to add to."""
        avatar = await rows.locked(session, avatar_id, user_id)
        if avatar is None or avatar.status is not AvatarStatus.DRAFT:
            return None
        state = rows.upload_state(avatar)
        state["received"] = number = int(state.get("received", 0)) + 1
        rows.save_upload_state(avatar, state)
        await session.flush()
        return number

    async def discard_draft(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> DraftDiscarded | None:
        """/cancel: the draft, its photo rows and its files go. None if there was no draft."""
        return await rows.discard_draft(
            session, storage=self._storage, now=self._clock.now(), user_id=user_id, avatar_id=avatar_id
        )

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
            kept = (
                await session.execute(
                    select(AvatarPhoto.sha256, AvatarPhoto.perceptual_hash).where(
                        AvatarPhoto.avatar_id == avatar_id
                    )
                )
            ).all()
        return _Snapshot(
            accepted=len(kept),
            hashes=[r.perceptual_hash for r in kept],
            shas={r.sha256 for r in kept},
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
        key = f"{rows.photo_prefix(user_id, avatar_id)}/photos/{verdict.sha256}.{extension}"
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
            avatar = await rows.locked(session, avatar_id, user_id)
            # Photos checked in parallel: only now, under the lock, is the set of accepted ones final.
            kept = (
                await session.execute(
                    select(AvatarPhoto.sha256, AvatarPhoto.perceptual_hash).where(
                        AvatarPhoto.avatar_id == avatar_id
                    )
                )
            ).all()
            verdict, key = checked.verdict, checked.key
            # A stored file not kept goes after the commit, unless an accepted photo is the same
            # content (so the same file).
            same_kept = verdict is not None and any(r.sha256 == verdict.sha256 for r in kept)
            drop_file = key is not None and not same_kept
            if avatar is None or avatar.status is not AvatarStatus.DRAFT:
                if drop_file and key is not None:
                    after_commit(session, lambda: self._storage.delete(key))
                return None  # cancelled or confirmed meanwhile
            reason = checked.reason
            if reason is None and len(kept) >= self.rules.max_photos:
                reason = "limit"
            elif reason is None:
                assert verdict is not None and verdict.perceptual_hash is not None
                if any(
                    r.sha256 == verdict.sha256
                    or hamming_distance(r.perceptual_hash, verdict.perceptual_hash)
                    <= self.rules.duplicate_max_distance
                    for r in kept
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
                return PhotoOutcome(True, len(kept) + 1)
            state = rows.upload_state(avatar)
            # The latest few are kept (a spare for jobs ending out of order), and how many in all.
            state["refused"] = [*state.get("refused", []), [*label, reason]][-2 * REFUSED_SHOWN :]
            state["refused_count"] = int(state.get("refused_count", 0)) + 1
            rows.save_upload_state(avatar, state)
            if drop_file and key is not None:
                after_commit(session, lambda: self._storage.delete(key))
            return PhotoOutcome(False, len(kept), reason)

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
            avatar = await rows.locked(session, avatar_id, user_id)
            if avatar is None or not rows.has_upload_status(avatar):
                return
            state = rows.upload_state(avatar)
            mine = not rows.turn_taken(state, self._clock.now())
            if mine:
                state["lease"] = (self._clock.now() + STATUS_LEASE).isoformat()
            else:
                state["dirty"] = True
            rows.save_upload_state(avatar, state)
        if mine:
            await self._show_upload_status(
                user_id, avatar_id, message_id=state.get("message_id"), with_button=bool(state.get("button"))
            )

    async def _read_status(
        self, user_id: int, avatar_id: uuid.UUID
    ) -> tuple[UploadStatus, str, dict[str, Any]] | None:
        """The status as committed now, marked clean; None once the draft ended (cancelled, or
        training took the row on)."""
        async with unit_of_work(self._sessions) as session:
            avatar = await rows.locked(session, avatar_id, user_id)
            if avatar is None or not rows.has_upload_status(avatar):
                return None
            state = rows.upload_state(avatar)
            state["dirty"] = False
            rows.save_upload_state(avatar, state)
            status = UploadStatus(
                name=avatar.name,
                type=avatar.type,
                accepted=await rows.photo_count(session, avatar_id),
                refused=[(int(n or 0), name, str(why)) for n, name, why in state.get("refused", [])],
                refused_count=int(state.get("refused_count", 0)),
                collecting=avatar.status is AvatarStatus.DRAFT,
            )
            locale = await user_locale(session, user_id)
        return status, locale, state

    async def _show_upload_status(
        self, user_id: int, avatar_id: uuid.UUID, *, message_id: int | None, with_button: bool
    ) -> None:
        """Holding the turn: show the status until nobody marked it dirty meanwhile.

        `message_id` and `with_button`: the message as this turn found it. A draft that ends
        during the turn (cancelled, or its training began) leaves its button to this turn.
        """
        while (read := await self._read_status(user_id, avatar_id)) is not None:
            status, locale, state = read
            message_id, shown = state.get("message_id"), state.get("shown")
            text, buttons = self._events.upload_status(
                locale=locale,
                status=status,
                min_photos=self.rules.min_photos,
                max_photos=self.rules.max_photos,
            )
            digest = hashlib.sha256(repr((text, buttons)).encode()).hexdigest()[:16]
            if message_id is None and status.collecting:
                message_id = await self._events.send(user_id, text, buttons=buttons)
                if message_id is not None:
                    shown, with_button = digest, bool(buttons)
            elif (
                message_id is not None
                and digest != shown
                and await self._events.edit(user_id, message_id, text, buttons=buttons)
            ):
                shown, with_button = digest, bool(buttons)
            async with unit_of_work(self._sessions) as session:
                avatar = await rows.locked(session, avatar_id, user_id)
                if avatar is not None and UPLOAD_KEY in avatar.training_config:
                    state = rows.upload_state(avatar)
                    state |= {"message_id": message_id, "shown": shown, "button": with_button}
                    if not state.get("dirty"):
                        state["lease"] = None
                    rows.save_upload_state(avatar, state)
            if avatar is None or UPLOAD_KEY not in avatar.training_config:
                break  # cancelled, or training took the row on
            if not state.get("dirty"):
                return
        if message_id is not None and with_button:
            # The draft ended during this turn (/cancel left its button to the turn's holder).
            await self._events.remove_buttons(user_id, message_id)

    async def review_photos(
        self, *, session: AsyncSession, user_id: int, avatar_id: uuid.UUID
    ) -> list[bytes]:
        """The draft's accepted photos, in the order they came, for the review."""
        avatar = await rows.owned(session, avatar_id, user_id)
        if avatar.status is not AvatarStatus.DRAFT:
            raise WrongAvatarStatus(avatar.status.value)
        photos = []
        for key in await rows.photo_keys(session, avatar_id):
            with contextlib.suppress(StorageError):  # removed meanwhile (/cancel)
                photos.append(await self._storage.get(key))
        return photos
