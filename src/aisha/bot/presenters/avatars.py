"""How avatars read to users: the wizard's steps, its status message, the review, the gallery
and what jobs announce (`AvatarNotifier`, the feature's `AvatarEvents`). Texts come from the
locale files; names are HTML-escaped; callback data shapes are defined here."""

from __future__ import annotations

import hashlib
import math
import uuid

import structlog
from aiogram.filters.callback_data import CallbackData
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
)

from aisha.avatars.errors import NotEnoughPhotos, TrainingUnavailable
from aisha.avatars.models import AvatarStatus, AvatarType, AvatarView, Review, UploadStatus
from aisha.i18n import Texts, Translator
from aisha.messaging import Button, Buttons, Messenger
from aisha.operations import Busy

log = structlog.get_logger(__name__)

REVIEW_CALLBACK = "avw:review"
START_CALLBACK = "avw:go"
TOPUP_CALLBACK = "avw:top"  # the review's price button when the balance is short
CANCEL_CALLBACK = "avw:cancel"
NEW_CALLBACK = "avw:new"
GENERATE_CALLBACK = "gen:new"  # handled by the generation feature
REFUSED_SHOWN = 8  # the status lists the latest refused photos, and how many more there were
ALBUM_MAX = 10  # Telegram's album: 2-10 pictures


class ChooseType(CallbackData, prefix="avt"):
    type: AvatarType


class Gallery(CallbackData, prefix="ava"):
    action: str  # open | main | rename | photos | delete | delete_yes | list
    id: str = ""


def quote(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class AvatarNotifier:
    """What jobs tell users, in their language, with the buttons that go with it."""

    def __init__(self, *, messenger: Messenger, translator: Translator) -> None:
        self._messenger = messenger
        self._translator = translator

    async def _send(self, user_id: int, text: str, *, buttons: Buttons | None = None) -> int | None:
        try:
            return await self._messenger.send_text(user_id, text, buttons=buttons)
        except Exception:
            # The database already holds the truth; a blocked bot or a Telegram outage loses a message only.
            log.warning("avatar.notify_failed", user_id=user_id, exc_info=True)
            return None

    async def send(self, user_id: int, text: str, *, buttons: Buttons | None) -> int | None:
        return await self._send(user_id, text, buttons=buttons)

    async def edit(self, user_id: int, message_id: int, text: str, *, buttons: Buttons | None) -> bool:
        try:
            await self._messenger.edit_text(user_id, message_id, text, buttons=buttons)
        except Exception:
            log.warning("avatar.status_edit_failed", user_id=user_id, exc_info=True)
            return False
        return True

    async def draft_expired(self, *, user_id: int, locale: str, name: str, message_id: int) -> None:
        text = self._translator.bind(locale)("avatars.upload.expired", name=quote(name))
        await self.edit(user_id, message_id, text, buttons=None)  # no button: the draft is gone

    async def remove_buttons(self, user_id: int, message_id: int) -> None:
        try:
            await self._messenger.remove_buttons(user_id, message_id)
        except Exception:
            log.warning("avatar.status_edit_failed", user_id=user_id, exc_info=True)

    def upload_status(
        self, *, locale: str, status: UploadStatus, min_photos: int, max_photos: int
    ) -> tuple[str, Buttons | None]:
        """The wizard's status message: accepted so far, what to do next, the refused ones."""
        t = self._translator.bind(locale)
        count = status.accepted
        lines = [
            t("avatars.upload.title", name=quote(status.name)),
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
                label = quote(file_name) if file_name else t("avatars.upload.photo_n", n=number)
                lines.append(
                    t("avatars.upload.refused_line", label=label, reason=t(f"avatars.refused.{reason}"))
                )
        return "\n".join(lines), buttons

    async def ready(self, *, user_id: int, locale: str, name: str, avatar_id: uuid.UUID) -> None:
        t = self._translator.bind(locale)
        # The button carries the avatar: it creates with this one, not the main one.
        create = Button(t("avatars.button.generate"), f"{GENERATE_CALLBACK}:{avatar_id.hex}")
        await self._send(user_id, t("avatars.ready", name=quote(name)), buttons=[[create]])

    async def failed(self, *, user_id: int, locale: str, name: str, reason: str) -> None:
        t = self._translator.bind(locale)
        await self._send(
            user_id, t("avatars.failed", name=quote(name), reason=t(f"avatars.failure.{reason}"))
        )


# --- the wizard ------------------------------------------------------------------------------


def refusal(t: Texts, error: Exception) -> str:
    """The alert for a review or a start the service refused (nothing was held or written)."""
    if isinstance(error, Busy):
        return t("limits.busy")
    if isinstance(error, NotEnoughPhotos):
        return t("avatars.not_enough", accepted=error.accepted, required=error.required)
    if isinstance(error, TrainingUnavailable):
        return t("avatars.unavailable")
    return t("errors.bad_button")  # AvatarNotFound, WrongAvatarStatus: a stale or foreign button


def _button(text: str, data: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text, callback_data=data)


async def ask_type(
    message: Message, t: Texts, *, portrait: int, style: int, min_photos: int, max_photos: int
) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [_button(t("avatars.type.portrait"), ChooseType(type=AvatarType.PORTRAIT).pack())],
            [_button(t("avatars.type.style"), ChooseType(type=AvatarType.STYLE).pack())],
        ]
    )
    text = t("avatars.choose_type", portrait=portrait, style=style, min=min_photos, max=max_photos)
    await message.answer(text, reply_markup=keyboard)


async def type_chosen(message: Message, t: Texts, avatar_type: AvatarType, *, max_name: int) -> None:
    # The kind is chosen: its buttons go, the choice stays in the text.
    chosen = t("avatars.type_chosen", type=t(f"avatars.type.{avatar_type.value}"))
    await message.edit_text(f"{message.html_text}\n\n{chosen}")
    await message.answer(t("avatars.ask_name", max=max_name))


def album_sizes(count: int) -> list[int]:
    """Albums as even as can be, none over 10 nor (with two photos or more) under 2: 11 → 6 + 5."""
    if count <= 0:
        return []
    albums = math.ceil(count / ALBUM_MAX)
    return [count // albums + (1 if i < count % albums else 0) for i in range(albums)]


async def send_albums(message: Message, photos: list[bytes]) -> None:
    """The photos themselves, as albums (Telegram takes 2-10 pictures in one)."""
    start = 0
    for size in album_sizes(len(photos)):
        chunk = photos[start : start + size]
        if size == 1:
            await message.answer_photo(BufferedInputFile(chunk[0], filename="1.jpg"))
        else:
            await message.answer_media_group(
                [
                    InputMediaPhoto(media=BufferedInputFile(data, filename=f"{start + n}.jpg"))
                    for n, data in enumerate(chunk, start=1)
                ]
            )
        start += size


def album_key(photos: list[bytes]) -> str:
    """What a review's album showed: the same photos give the same key."""
    digest = hashlib.sha256()
    for data in photos:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


async def show_review(
    message: Message, t: Texts, summary: Review, photos: list[bytes], *, album_above: bool = False
) -> int:
    """The accepted photos (unless `album_above`: the last review's album shows these very
    photos), then the review with Start (or a top-up when short) and Cancel; its message id."""
    if not album_above:
        await send_albums(message, photos)
    text = t(
        "avatars.review",
        name=quote(summary.name),
        type=t(f"avatars.type.{summary.type.value}"),
        count=summary.accepted,
    )
    if album_above:
        text += "\n" + t("avatars.review_album_above")
    text += "\n" + t("avatars.review_price", price=summary.price, balance=summary.balance)
    # A balance that doesn't cover the price gets the top-up at once, not a refusal after the press.
    if summary.balance < summary.price:
        go = _button(t("avatars.button.topup", price=summary.price), TOPUP_CALLBACK)
    else:
        go = _button(t("avatars.button.start"), START_CALLBACK)
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[go], [_button(t("avatars.button.cancel"), CANCEL_CALLBACK)]]
    )
    sent = await message.answer(text, reply_markup=keyboard)
    return sent.message_id


# --- the gallery -----------------------------------------------------------------------------


def _status_text(t: Texts, view: AvatarView) -> str:
    if view.queue_position is not None:
        return t("avatars.status.queued", position=view.queue_position)
    return t(f"avatars.status.{view.status.value}")


def gallery_text(t: Texts, views: list[AvatarView]) -> str:
    if not views:
        return t("avatars.gallery.empty")
    lines = [t("avatars.gallery.title")]
    for view in views:
        main = t("avatars.gallery.main_mark") if view.is_main else ""
        lines.append(
            t(
                "avatars.gallery.line",
                name=quote(view.name),
                type=t(f"avatars.type.{view.type.value}"),
                status=_status_text(t, view),
                main=main,
            )
        )
    return "\n".join(lines)


def gallery_keyboard(t: Texts, views: list[AvatarView]) -> InlineKeyboardMarkup:
    rows = [[_button(view.name, Gallery(action="open", id=view.id.hex).pack())] for view in views]
    rows.append([_button(t("avatars.button.new"), NEW_CALLBACK)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def avatar_text(t: Texts, view: AvatarView) -> str:
    text = t(
        "avatars.card",
        name=quote(view.name),
        type=t(f"avatars.type.{view.type.value}"),
        status=_status_text(t, view),
        photos=view.photos,
    )
    if view.is_main:
        text += "\n" + t("avatars.card.is_main")
    return text


def avatar_keyboard(t: Texts, view: AvatarView) -> InlineKeyboardMarkup:
    def button(key: str, action: str) -> InlineKeyboardButton:
        return _button(t(key), Gallery(action=action, id=view.id.hex).pack())

    rows: list[list[InlineKeyboardButton]] = []
    if view.status is AvatarStatus.READY and not view.is_main:
        rows.append([button("avatars.button.set_main", "main")])
    rows.append([button("avatars.button.rename", "rename")])
    if view.photos:
        rows.append([button("avatars.button.photos", "photos")])
    if view.status in (AvatarStatus.READY, AvatarStatus.FAILED):
        rows.append([button("avatars.button.delete", "delete")])
    rows.append([button("avatars.button.back", "list")])
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def show_gallery(message: Message, t: Texts, views: list[AvatarView], *, edit: bool = False) -> None:
    text, keyboard = gallery_text(t, views), gallery_keyboard(t, views)
    if edit:
        await message.edit_text(text, reply_markup=keyboard)
    else:
        await message.answer(text, reply_markup=keyboard)


async def show_card(message: Message, t: Texts, view: AvatarView) -> None:
    await message.edit_text(avatar_text(t, view), reply_markup=avatar_keyboard(t, view))


async def ask_delete(message: Message, t: Texts, view: AvatarView) -> None:
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                _button(t("avatars.button.delete_yes"), Gallery(action="delete_yes", id=view.id.hex).pack()),
                _button(t("avatars.button.back"), Gallery(action="open", id=view.id.hex).pack()),
            ]
        ]
    )
    await message.edit_text(t("avatars.delete_confirm", name=quote(view.name)), reply_markup=keyboard)


async def send_samples(message: Message, t: Texts, photos: list[bytes]) -> None:
    if not photos:
        await message.answer(t("avatars.photos_gone"))
    for index, data in enumerate(photos, start=1):
        await message.answer_photo(BufferedInputFile(data, filename=f"{index}.jpg"))
