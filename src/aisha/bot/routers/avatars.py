"""/avatar (the wizard: type → name → photos → confirm) and /avatars (the gallery).

Thin: every rule lives in AvatarService. Photos are only handed to the `avatars.photo` job here;
the job downloads and checks each one and keeps the wizard's one status message up to date, so
an album never blocks the update. A step's buttons go when the step ends.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING

from aiogram import F, Router, html
from aiogram.filters import Command, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
)
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.errors import (
    AvatarNotFound,
    InvalidAvatarName,
    NotEnoughPhotos,
    TrainingUnavailable,
    WrongAvatarStatus,
)
from aisha.avatars.models import AvatarStatus, AvatarType
from aisha.avatars.service import MAX_NAME_LENGTH, REVIEW_CALLBACK, TRAIN_JOB, AvatarView
from aisha.billing.errors import InsufficientCredits
from aisha.bot import resume
from aisha.bot.keyboards import main_menu, menu_button
from aisha.bot.paywall import insufficient_keyboard, insufficient_text, show_packages
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.db.session import after_commit
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

START_CALLBACK = "avw:go"
TOPUP_CALLBACK = "avw:top"  # the review's price button when the balance is short
CANCEL_CALLBACK = "avw:cancel"
NEW_CALLBACK = "avw:new"
REVIEW_MESSAGE_KEY = "review_message"  # FSM data: the review whose Start and Cancel are shown
ALBUM_MAX = 10  # Telegram's album: 2-10 pictures


def album_sizes(count: int) -> list[int]:
    """Albums as even as can be, none over 10 nor (with two photos or more) under 2: 11 → 6 + 5."""
    if count <= 0:
        return []
    albums = math.ceil(count / ALBUM_MAX)
    return [count // albums + (1 if i < count % albums else 0) for i in range(albums)]


class AvatarWizard(StatesGroup):
    choosing_type = State()
    naming = State()
    uploading = State()


class AvatarRenaming(StatesGroup):
    naming = State()


class ChooseType(CallbackData, prefix="avt"):
    type: AvatarType


class Gallery(CallbackData, prefix="ava"):
    action: str  # open | main | rename | photos | delete | delete_yes | list
    id: str = ""


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
                name=html.quote(view.name),
                type=t(f"avatars.type.{view.type.value}"),
                status=_status_text(t, view),
                main=main,
            )
        )
    return "\n".join(lines)


def gallery_keyboard(t: Texts, views: list[AvatarView]) -> InlineKeyboardMarkup:
    rows = [
        [InlineKeyboardButton(text=view.name, callback_data=Gallery(action="open", id=view.id.hex).pack())]
        for view in views
    ]
    rows.append([InlineKeyboardButton(text=t("avatars.button.new"), callback_data=NEW_CALLBACK)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def avatar_text(t: Texts, view: AvatarView) -> str:
    text = t(
        "avatars.card",
        name=html.quote(view.name),
        type=t(f"avatars.type.{view.type.value}"),
        status=_status_text(t, view),
        photos=view.photos,
    )
    if view.is_main:
        text += "\n" + t("avatars.card.is_main")
    return text


def avatar_keyboard(t: Texts, view: AvatarView) -> InlineKeyboardMarkup:
    def button(key: str, action: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(text=t(key), callback_data=Gallery(action=action, id=view.id.hex).pack())

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


async def _send_albums(message: Message, photos: list[bytes]) -> None:
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


async def _close_review(services: Services, user: User, state: FSMContext) -> None:
    """The last review's Start and Cancel go: the wizard ended, or a newer review took over."""
    review = (await state.get_data()).get(REVIEW_MESSAGE_KEY)
    if isinstance(review, int):
        await state.update_data({REVIEW_MESSAGE_KEY: None})
        await services.messenger.remove_buttons(user.telegram_id, review)


def create_cancel_router(services: Services) -> Router:
    """/cancel inside the wizard removes the uploads; included before the general /cancel."""
    router = Router(name="avatars-cancel")

    @router.message(Command("cancel"), StateFilter(AvatarWizard))
    async def cancel(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        await _discard(services, session, user, state)
        await message.answer(t("avatars.cancelled"), reply_markup=main_menu(t))

    return router


async def _discard(services: Services, session: AsyncSession, user: User, state: FSMContext) -> None:
    """The draft goes, and its status message keeps no button: that step is over."""
    avatar_id = parse_uuid(str((await state.get_data()).get("avatar_id", "")))
    await _close_review(services, user, state)
    await state.clear()
    if avatar_id is None:
        return
    discarded = await services.avatars.discard_draft(
        session=session, user_id=user.telegram_id, avatar_id=avatar_id
    )
    if discarded is not None and discarded.status_message is not None:
        await services.messenger.remove_buttons(user.telegram_id, discarded.status_message)


def create_router(services: Services) -> Router:
    router = Router(name="avatars")
    avatars = services.avatars

    # --- the wizard ----------------------------------------------------------------------------

    async def begin(message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext) -> None:
        if not avatars.available:
            await message.answer(t("avatars.unavailable"))
            return
        if await state.get_state() in AvatarWizard.__state_names__:
            await _discard(services, session, user, state)  # starting over drops the half-made one
        await state.set_state(AvatarWizard.choosing_type)
        keyboard = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text=t("avatars.type.portrait"),
                        callback_data=ChooseType(type=AvatarType.PORTRAIT).pack(),
                    )
                ],
                [
                    InlineKeyboardButton(
                        text=t("avatars.type.style"), callback_data=ChooseType(type=AvatarType.STYLE).pack()
                    )
                ],
            ]
        )
        await message.answer(
            t(
                "avatars.choose_type",
                portrait=avatars.price(AvatarType.PORTRAIT),
                style=avatars.price(AvatarType.STYLE),
                min=avatars.rules.min_photos,
                max=avatars.rules.max_photos,
            ),
            reply_markup=keyboard,
        )

    @router.message(Command("avatar"))
    async def avatar_command(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        await begin(message, session, user, t, state)

    @router.callback_query(F.data == NEW_CALLBACK)
    async def new_pressed(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        await query.answer()
        if isinstance(query.message, Message):
            await begin(query.message, session, user, t, state)

    @router.callback_query(ChooseType.filter(), StateFilter(AvatarWizard.choosing_type))
    async def type_chosen(
        query: CallbackQuery, callback_data: ChooseType, t: Texts, state: FSMContext
    ) -> None:
        await state.update_data(type=callback_data.type.value)
        await state.set_state(AvatarWizard.naming)
        await query.answer()
        if isinstance(query.message, Message):
            # The kind is chosen: its buttons go, the choice stays in the text.
            chosen = t("avatars.type_chosen", type=t(f"avatars.type.{callback_data.type.value}"))
            await query.message.edit_text(f"{query.message.html_text}\n\n{chosen}")
            await query.message.answer(t("avatars.ask_name", max=MAX_NAME_LENGTH))

    @router.message(AvatarWizard.naming, F.text)
    async def named(message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext) -> None:
        data = await state.get_data()
        try:
            avatar = await avatars.create_draft(
                session=session,
                user_id=user.telegram_id,
                avatar_type=AvatarType(data.get("type", AvatarType.PORTRAIT.value)),
                name=message.text or "",
            )
        except InvalidAvatarName:
            await message.answer(t("avatars.bad_name", max=MAX_NAME_LENGTH))
            return
        await state.update_data(avatar_id=str(avatar.id))
        await state.set_state(AvatarWizard.uploading)
        await message.answer(
            t(
                f"avatars.ask_photos.{avatar.type.value}",
                min=avatars.rules.min_photos,
                max=avatars.rules.max_photos,
            )
        )

    @router.message(AvatarWizard.uploading, F.photo | F.document)
    async def photo_received(message: Message, session: AsyncSession, user: User, state: FSMContext) -> None:
        avatar_id = parse_uuid(str((await state.get_data()).get("avatar_id", "")))
        number = None
        if avatar_id is not None:
            number = await avatars.number_upload(
                session=session, user_id=user.telegram_id, avatar_id=avatar_id
            )
        if avatar_id is None or number is None:
            return  # the draft is gone (expired): nothing to add the photo to
        file = message.photo[-1] if message.photo else message.document
        assert file is not None
        file_name = message.document.file_name if message.document else None
        # Only the file's id, size, name and number travel: the job downloads and checks it off
        # this update, once the update committed (until then it holds the draft's row).
        after_commit(
            session,
            lambda: services.queue.enqueue(
                "avatars.photo",
                user_id=user.telegram_id,
                avatar_id=str(avatar_id),
                file_id=file.file_id,
                file_size=file.file_size,
                number=number,
                file_name=file_name,
            ),
        )

    @router.message(AvatarWizard.uploading)
    async def not_a_photo(message: Message, t: Texts) -> None:
        # No button here: the status message keeps the one "Review and start".
        await message.answer(
            t("avatars.photos.hint", min=avatars.rules.min_photos, max=avatars.rules.max_photos)
        )

    @router.callback_query(F.data == REVIEW_CALLBACK, StateFilter(AvatarWizard.uploading))
    async def review(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        avatar_id = parse_uuid(str((await state.get_data()).get("avatar_id", "")))
        try:
            if avatar_id is None:
                raise AvatarNotFound("no draft")
            summary = await avatars.review(session=session, user_id=user.telegram_id, avatar_id=avatar_id)
            if summary.accepted < avatars.rules.min_photos:
                await query.answer(
                    t("avatars.not_enough", accepted=summary.accepted, required=avatars.rules.min_photos),
                    show_alert=True,
                )
                return
            photos = await avatars.review_photos(
                session=session, user_id=user.telegram_id, avatar_id=avatar_id
            )
        except (AvatarNotFound, WrongAvatarStatus):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        await query.answer()
        if not isinstance(query.message, Message):
            return
        await _close_review(services, user, state)  # a newer review replaces it
        await _send_albums(query.message, photos)
        text = t(
            "avatars.review",
            name=html.quote(summary.name),
            type=t(f"avatars.type.{summary.type.value}"),
            count=summary.accepted,
        )
        text += "\n" + t("avatars.review_price", price=summary.price, balance=summary.balance)
        # A balance that doesn't cover the price gets the top-up at once, not a refusal after the press.
        if summary.balance < summary.price:
            go = InlineKeyboardButton(
                text=t("avatars.button.topup", price=summary.price), callback_data=TOPUP_CALLBACK
            )
        else:
            go = InlineKeyboardButton(text=t("avatars.button.start"), callback_data=START_CALLBACK)
        keyboard = InlineKeyboardMarkup(
            inline_keyboard=[
                [go],
                [InlineKeyboardButton(text=t("avatars.button.cancel"), callback_data=CANCEL_CALLBACK)],
            ]
        )
        sent = await query.message.answer(text, reply_markup=keyboard)
        await state.update_data({REVIEW_MESSAGE_KEY: sent.message_id})

    @router.callback_query(F.data == TOPUP_CALLBACK, StateFilter(AvatarWizard.uploading))
    async def top_up_first(query: CallbackQuery, t: Texts, state: FSMContext) -> None:
        avatar_id = parse_uuid(str((await state.get_data()).get("avatar_id", "")))
        if avatar_id is None or not isinstance(query.message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        await remember(state, avatar_id)
        await query.answer()
        await show_packages(query.message, t, services.payments.packages)

    @router.callback_query(F.data == START_CALLBACK, StateFilter(AvatarWizard.uploading))
    async def start_training(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        avatar_id = parse_uuid(str((await state.get_data()).get("avatar_id", "")))
        if avatar_id is None or not isinstance(query.message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        await train(query, query.message, session, user, t, state, avatar_id)

    @router.callback_query(Resume.filter(F.kind == IntentKind.AVATAR))
    async def resume_training(
        query: CallbackQuery,
        callback_data: Resume,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        """ "Continue" after a top-up: the remembered draft avatar, confirmed as its own button would."""
        found, intent = await resume.lookup(state, callback_data, now=services.clock.now())
        avatar_id = parse_uuid(str(intent.data.get("avatar_id", ""))) if intent else None
        if avatar_id is None or not isinstance(query.message, Message):
            await query.answer(t(resume.answer_for(found)), show_alert=True)
            return
        await train(query, query.message, session, user, t, state, avatar_id)

    async def remember(state: FSMContext, avatar_id: uuid.UUID) -> None:
        data = {"avatar_id": avatar_id.hex}
        await resume.remember(state, kind=IntentKind.AVATAR, data=data, now=services.clock.now())

    async def train(
        query: CallbackQuery,
        message: Message,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
        avatar_id: uuid.UUID,
    ) -> None:
        """The one way a draft avatar is confirmed: the review's button, or "Continue" after a top-up."""
        if not await services.locks.hold_for(session, user_id=user.telegram_id):
            await query.answer(t("limits.busy"), show_alert=True)
            return
        try:
            avatar = await avatars.confirm(session=session, user_id=user.telegram_id, avatar_id=avatar_id)
        except InsufficientCredits as error:
            await remember(state, avatar_id)  # nothing is held: a top-up offers to continue
            await query.answer()
            await message.answer(insufficient_text(t, error), reply_markup=insufficient_keyboard(t))
            return
        except NotEnoughPhotos as error:
            await query.answer(
                t("avatars.not_enough", accepted=error.accepted, required=error.required), show_alert=True
            )
            return
        except TrainingUnavailable:
            await query.answer(t("avatars.unavailable"), show_alert=True)
            return
        except (AvatarNotFound, WrongAvatarStatus):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        if parse_uuid(str((await state.get_data()).get("avatar_id", ""))) == avatar_id:
            await state.clear()  # the wizard of this avatar is done
        await resume.forget_matching(state, kind=IntentKind.AVATAR, key="avatar_id", value=avatar_id.hex)
        user_id = user.telegram_id
        after_commit(session, lambda: services.queue.enqueue(TRAIN_JOB, avatar_id=str(avatar_id)))
        # The status message's step is over: its button goes (by whoever holds its turn).
        after_commit(session, lambda: avatars.refresh_upload_status(user_id=user_id, avatar_id=avatar_id))
        await query.answer()
        # The review's (or the offer's) buttons are replaced by what happened.
        await message.edit_text(t("avatars.training_started", name=html.quote(avatar.name)))

    @router.callback_query(F.data == CANCEL_CALLBACK, StateFilter(AvatarWizard))
    async def cancel_pressed(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        await _discard(services, session, user, state)
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.edit_text(t("avatars.cancelled"))

    # --- the gallery ---------------------------------------------------------------------------

    @router.message(Command("avatars"))
    @router.message(menu_button(services.translator, "menu.avatars"))
    async def show_gallery(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        views = await avatars.list_avatars(session=session, user_id=user.telegram_id)
        await message.answer(gallery_text(t, views), reply_markup=gallery_keyboard(t, views))

    @router.callback_query(Gallery.filter())
    async def gallery_action(
        query: CallbackQuery,
        callback_data: Gallery,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        message = query.message if isinstance(query.message, Message) else None
        if callback_data.action == "list":
            views = await avatars.list_avatars(session=session, user_id=user.telegram_id)
            await query.answer()
            if message is not None:
                await message.edit_text(gallery_text(t, views), reply_markup=gallery_keyboard(t, views))
            return
        avatar_id = parse_uuid(callback_data.id)
        try:
            if avatar_id is None or message is None:
                raise AvatarNotFound(callback_data.id)
            await _act(callback_data.action, avatar_id, message, query, session, user, t, state)
        except (AvatarNotFound, WrongAvatarStatus, ValueError):
            # Someone else's avatar, a deleted one, or tampered data: all look the same.
            await query.answer(t("errors.bad_button"), show_alert=True)

    async def _act(
        action: str,
        avatar_id: uuid.UUID,
        message: Message,
        query: CallbackQuery,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        user_id = user.telegram_id
        if action == "open":
            view = await avatars.get(session=session, user_id=user_id, avatar_id=avatar_id)
            await query.answer()
            await message.edit_text(avatar_text(t, view), reply_markup=avatar_keyboard(t, view))
        elif action == "main":
            await avatars.set_main(session=session, user_id=user_id, avatar_id=avatar_id)
            view = await avatars.get(session=session, user_id=user_id, avatar_id=avatar_id)
            await query.answer(t("avatars.main_set"))
            await message.edit_text(avatar_text(t, view), reply_markup=avatar_keyboard(t, view))
        elif action == "rename":
            await avatars.get(session=session, user_id=user_id, avatar_id=avatar_id)  # ownership
            await state.set_state(AvatarRenaming.naming)
            await state.update_data(rename_id=str(avatar_id))
            await query.answer()
            await message.answer(t("avatars.ask_new_name", max=MAX_NAME_LENGTH))
        elif action == "photos":
            photos = await avatars.sample_photos(session=session, user_id=user_id, avatar_id=avatar_id)
            await query.answer()
            if not photos:
                await message.answer(t("avatars.photos_gone"))
            for index, data in enumerate(photos, start=1):
                await message.answer_photo(BufferedInputFile(data, filename=f"{index}.jpg"))
        elif action == "delete":
            view = await avatars.get(session=session, user_id=user_id, avatar_id=avatar_id)
            if view.status not in (AvatarStatus.READY, AvatarStatus.FAILED):
                raise WrongAvatarStatus(view.status.value)
            keyboard = InlineKeyboardMarkup(
                inline_keyboard=[
                    [
                        InlineKeyboardButton(
                            text=t("avatars.button.delete_yes"),
                            callback_data=Gallery(action="delete_yes", id=avatar_id.hex).pack(),
                        ),
                        InlineKeyboardButton(
                            text=t("avatars.button.back"),
                            callback_data=Gallery(action="open", id=avatar_id.hex).pack(),
                        ),
                    ]
                ]
            )
            await query.answer()
            await message.edit_text(
                t("avatars.delete_confirm", name=html.quote(view.name)), reply_markup=keyboard
            )
        elif action == "delete_yes":
            await avatars.delete(session=session, user_id=user_id, avatar_id=avatar_id)
            views = await avatars.list_avatars(session=session, user_id=user_id)
            await query.answer(t("avatars.deleted"))
            await message.edit_text(gallery_text(t, views), reply_markup=gallery_keyboard(t, views))
        else:
            raise ValueError(action)

    @router.message(AvatarRenaming.naming, F.text)
    async def renamed(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        avatar_id = parse_uuid(str((await state.get_data()).get("rename_id", "")))
        if avatar_id is None:
            await state.clear()
            return
        try:
            name = await avatars.rename(
                session=session, user_id=user.telegram_id, avatar_id=avatar_id, name=message.text or ""
            )
        except InvalidAvatarName:
            await message.answer(t("avatars.bad_name", max=MAX_NAME_LENGTH))
            return
        except AvatarNotFound:
            await state.clear()
            await message.answer(t("errors.bad_button"))
            return
        await state.clear()
        await message.answer(t("avatars.renamed", name=html.quote(name)), reply_markup=main_menu(t))

    return router
