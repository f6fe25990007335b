"""/avatar (the wizard: type → name → photos → confirm) and /avatars (the gallery).

Thin: every rule lives in the avatar service, every text and keyboard in
`bot/presenters/avatars.py`. Photos are only handed to the `avatars.photo` job here; the job
downloads and checks each one and keeps the wizard's one status message up to date, so an album
never blocks the update. A step's buttons go when the step ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.errors import (
    AvatarNotFound,
    InvalidAvatarName,
    NotEnoughPhotos,
    TrainingUnavailable,
    WrongAvatarStatus,
)
from aisha.avatars.models import AvatarType
from aisha.avatars.photos import PhotoUpload
from aisha.avatars.service import MAX_NAME_LENGTH
from aisha.billing.errors import InsufficientCredits
from aisha.bot import resume
from aisha.bot.keyboards import main_menu, menu_button
from aisha.bot.paywall import insufficient_keyboard, insufficient_text, show_packages
from aisha.bot.presenters import avatars as present
from aisha.bot.presenters.avatars import (
    CANCEL_CALLBACK,
    NEW_CALLBACK,
    REVIEW_CALLBACK,
    START_CALLBACK,
    TOPUP_CALLBACK,
    ChooseType,
    Gallery,
)
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.i18n import Texts
from aisha.operations import Busy
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

REVIEW_MESSAGE_KEY = "review_message"  # FSM data: the review whose Start and Cancel are shown
REVIEW_ALBUM_KEY = "review_album"  # FSM data: what the last review's album showed (album_key)


class AvatarWizard(StatesGroup):
    choosing_type = State()
    naming = State()
    uploading = State()


class AvatarRenaming(StatesGroup):
    naming = State()


async def _draft_id(state: FSMContext, key: str = "avatar_id") -> uuid.UUID | None:
    return parse_uuid(str((await state.get_data()).get(key, "")))


async def _close_review(services: Services, user: User, state: FSMContext) -> None:
    """The last review's Start and Cancel go: the wizard ended, or a newer review took over."""
    review = (await state.get_data()).get(REVIEW_MESSAGE_KEY)
    if isinstance(review, int):
        await state.update_data({REVIEW_MESSAGE_KEY: None})
        await services.messenger.remove_buttons(user.telegram_id, review)


async def _discard(services: Services, session: AsyncSession, user: User, state: FSMContext) -> None:
    """The draft goes, and its status message keeps no button: that step is over."""
    avatar_id = await _draft_id(state)
    await _close_review(services, user, state)
    await state.clear()
    if avatar_id is None:
        return
    discarded = await services.avatars.photos.discard_draft(
        session=session, user_id=user.telegram_id, avatar_id=avatar_id
    )
    if discarded is not None and discarded.status_message is not None:
        await services.messenger.remove_buttons(user.telegram_id, discarded.status_message)


async def cancel(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    await _discard(services, session, user, state)
    await message.answer(t("avatars.cancelled"), reply_markup=main_menu(t))


def create_cancel_router(services: Services) -> Router:
    """/cancel inside the wizard removes the uploads; included before the general /cancel."""
    router = Router(name="avatars-cancel")
    router.message.register(cancel, Command("cancel"), StateFilter(AvatarWizard))
    return router


# --- the wizard --------------------------------------------------------------------------------


async def _begin(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    avatars = services.avatars
    if not avatars.available:
        await message.answer(t("avatars.unavailable"))
        return
    if await state.get_state() in AvatarWizard.__state_names__:
        await _discard(services, session, user, state)  # starting over drops the half-made one
    await state.set_state(AvatarWizard.choosing_type)
    await present.ask_type(
        message,
        t,
        portrait=avatars.price(AvatarType.PORTRAIT),
        style=avatars.price(AvatarType.STYLE),
        min_photos=avatars.rules.min_photos,
        max_photos=avatars.rules.max_photos,
    )


async def avatar_command(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    await _begin(message, services, session, user, t, state)


async def new_pressed(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await _begin(query.message, services, session, user, t, state)


async def type_chosen(query: CallbackQuery, callback_data: ChooseType, t: Texts, state: FSMContext) -> None:
    await state.update_data(type=callback_data.type.value)
    await state.set_state(AvatarWizard.naming)
    await query.answer()
    if isinstance(query.message, Message):
        await present.type_chosen(query.message, t, callback_data.type, max_name=MAX_NAME_LENGTH)


async def named(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    data = await state.get_data()
    try:
        avatar = await services.avatars.create_draft(
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
    rules = services.avatars.rules
    await message.answer(
        t(f"avatars.ask_photos.{avatar.type.value}", min=rules.min_photos, max=rules.max_photos)
    )


async def photo_received(
    message: Message, services: Services, session: AsyncSession, user: User, state: FSMContext
) -> None:
    avatar_id = await _draft_id(state)
    if avatar_id is None:
        return  # the draft is gone (expired): nothing to add the photo to
    file = message.photo[-1] if message.photo else message.document
    assert file is not None
    upload = PhotoUpload(
        file_id=file.file_id,
        file_size=file.file_size,
        file_name=message.document.file_name if message.document else None,
    )
    await services.avatars.photos.receive(
        session=session, user_id=user.telegram_id, avatar_id=avatar_id, upload=upload
    )


async def not_a_photo(message: Message, services: Services, t: Texts) -> None:
    # No button here: the status message keeps the one "Review and start".
    rules = services.avatars.rules
    await message.answer(t("avatars.photos.hint", min=rules.min_photos, max=rules.max_photos))


async def review(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    avatar_id = await _draft_id(state)
    try:
        if avatar_id is None:
            raise AvatarNotFound("no draft")
        summary, photos = await services.avatars.open_review(
            session=session, user_id=user.telegram_id, avatar_id=avatar_id
        )
    except (NotEnoughPhotos, AvatarNotFound, WrongAvatarStatus) as error:
        await query.answer(present.refusal(t, error), show_alert=True)
        return
    await query.answer()
    if not isinstance(query.message, Message):
        return
    await _close_review(services, user, state)  # a newer review replaces it
    album = present.album_key(photos)  # the same photos again: their album is above already
    above = (await state.get_data()).get(REVIEW_ALBUM_KEY) == album
    sent = await present.show_review(query.message, t, summary, photos, album_above=above)
    await state.update_data({REVIEW_MESSAGE_KEY: sent, REVIEW_ALBUM_KEY: album})


async def _remember(services: Services, state: FSMContext, avatar_id: uuid.UUID) -> None:
    data = {"avatar_id": avatar_id.hex}
    await resume.remember(state, kind=IntentKind.AVATAR, data=data, now=services.clock.now())


async def top_up_first(query: CallbackQuery, services: Services, t: Texts, state: FSMContext) -> None:
    avatar_id = await _draft_id(state)
    if avatar_id is None or not isinstance(query.message, Message):
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    await _remember(services, state, avatar_id)
    await query.answer()
    await show_packages(query.message, t, services.payments.packages)


async def start_pressed(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    avatar_id = await _draft_id(state)
    if avatar_id is None or not isinstance(query.message, Message):
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    await _train(query, query.message, services, session, user, t, state, avatar_id)


async def resume_training(
    query: CallbackQuery,
    callback_data: Resume,
    services: Services,
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
    await _train(query, query.message, services, session, user, t, state, avatar_id)


async def _train(
    query: CallbackQuery,
    message: Message,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
    avatar_id: uuid.UUID,
) -> None:
    """The one way a draft avatar is confirmed: the review's button, or "Continue" after a top-up."""
    try:
        avatar = await services.avatars.start_training(
            session=session, user_id=user.telegram_id, avatar_id=avatar_id
        )
    except InsufficientCredits as error:
        await _remember(services, state, avatar_id)  # nothing is held: a top-up offers to continue
        await query.answer()
        await message.answer(insufficient_text(t, error), reply_markup=insufficient_keyboard(t))
        return
    except (Busy, NotEnoughPhotos, TrainingUnavailable, AvatarNotFound, WrongAvatarStatus) as error:
        await query.answer(present.refusal(t, error), show_alert=True)
        return
    if await _draft_id(state) == avatar_id:
        await state.clear()  # the wizard of this avatar is done
    await resume.forget_matching(state, kind=IntentKind.AVATAR, key="avatar_id", value=avatar_id.hex)
    await query.answer()
    # The review's (or the offer's) buttons are replaced by what happened.
    await message.edit_text(t("avatars.training_started", name=present.quote(avatar.name)))


async def cancel_pressed(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    await _discard(services, session, user, state)
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.edit_text(t("avatars.cancelled"))


# --- the gallery -------------------------------------------------------------------------------


async def show_gallery(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts
) -> None:
    views = await services.avatars.list_avatars(session=session, user_id=user.telegram_id)
    await present.show_gallery(message, t, views)


@dataclass(frozen=True, slots=True)
class _Press:
    """A press on an avatar's card, with what its action needs."""

    services: Services
    session: AsyncSession
    query: CallbackQuery
    message: Message
    user_id: int
    t: Texts
    state: FSMContext


async def _open(p: _Press, avatar_id: uuid.UUID) -> None:
    view = await p.services.avatars.get(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    await p.query.answer()
    await present.show_card(p.message, p.t, view)


async def _set_main(p: _Press, avatar_id: uuid.UUID) -> None:
    await p.services.avatars.set_main(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    view = await p.services.avatars.get(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    await p.query.answer(p.t("avatars.main_set"))
    await present.show_card(p.message, p.t, view)


async def _rename(p: _Press, avatar_id: uuid.UUID) -> None:
    await p.services.avatars.get(session=p.session, user_id=p.user_id, avatar_id=avatar_id)  # ownership
    await p.state.set_state(AvatarRenaming.naming)
    await p.state.update_data(rename_id=str(avatar_id))
    await p.query.answer()
    await p.message.answer(p.t("avatars.ask_new_name", max=MAX_NAME_LENGTH))


async def _photos(p: _Press, avatar_id: uuid.UUID) -> None:
    photos = await p.services.avatars.sample_photos(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    await p.query.answer()
    await present.send_samples(p.message, p.t, photos)


async def _ask_delete(p: _Press, avatar_id: uuid.UUID) -> None:
    view = await p.services.avatars.deletable(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    await p.query.answer()
    await present.ask_delete(p.message, p.t, view)


async def _delete(p: _Press, avatar_id: uuid.UUID) -> None:
    await p.services.avatars.delete(session=p.session, user_id=p.user_id, avatar_id=avatar_id)
    views = await p.services.avatars.list_avatars(session=p.session, user_id=p.user_id)
    await p.query.answer(p.t("avatars.deleted"))
    await present.show_gallery(p.message, p.t, views, edit=True)


_ACTIONS: dict[str, Callable[[_Press, uuid.UUID], Awaitable[None]]] = {
    "open": _open,
    "main": _set_main,
    "rename": _rename,
    "photos": _photos,
    "delete": _ask_delete,
    "delete_yes": _delete,
}


async def gallery_action(
    query: CallbackQuery,
    callback_data: Gallery,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    message = query.message if isinstance(query.message, Message) else None
    if callback_data.action == "list":
        views = await services.avatars.list_avatars(session=session, user_id=user.telegram_id)
        await query.answer()
        if message is not None:
            await present.show_gallery(message, t, views, edit=True)
        return
    avatar_id = parse_uuid(callback_data.id)
    action = _ACTIONS.get(callback_data.action)
    try:
        if avatar_id is None or message is None or action is None:
            raise AvatarNotFound(callback_data.id)
        await action(_Press(services, session, query, message, user.telegram_id, t, state), avatar_id)
    except (AvatarNotFound, WrongAvatarStatus, ValueError):
        # Someone else's avatar, a deleted one, or tampered data: all look the same.
        await query.answer(t("errors.bad_button"), show_alert=True)


async def renamed(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    avatar_id = await _draft_id(state, "rename_id")
    if avatar_id is None:
        await state.clear()
        return
    try:
        name = await services.avatars.rename(
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
    await message.answer(t("avatars.renamed", name=present.quote(name)), reply_markup=main_menu(t))


def create_router(services: Services) -> Router:
    """The avatar handlers, in the order they are matched (`services` only names the menu button)."""
    router = Router(name="avatars")
    router.message.register(avatar_command, Command("avatar"))
    router.callback_query.register(new_pressed, F.data == NEW_CALLBACK)
    router.callback_query.register(type_chosen, ChooseType.filter(), StateFilter(AvatarWizard.choosing_type))
    router.message.register(named, AvatarWizard.naming, F.text)
    router.message.register(photo_received, AvatarWizard.uploading, F.photo | F.document)
    router.message.register(not_a_photo, AvatarWizard.uploading)
    router.callback_query.register(review, F.data == REVIEW_CALLBACK, StateFilter(AvatarWizard.uploading))
    router.callback_query.register(
        top_up_first, F.data == TOPUP_CALLBACK, StateFilter(AvatarWizard.uploading)
    )
    router.callback_query.register(
        start_pressed, F.data == START_CALLBACK, StateFilter(AvatarWizard.uploading)
    )
    router.callback_query.register(resume_training, Resume.filter(F.kind == IntentKind.AVATAR))
    router.callback_query.register(cancel_pressed, F.data == CANCEL_CALLBACK, StateFilter(AvatarWizard))
    router.message.register(show_gallery, menu_button(services.translator, "menu.avatars"))
    router.message.register(show_gallery, Command("avatars"))
    router.callback_query.register(gallery_action, Gallery.filter())
    router.message.register(renamed, AvatarRenaming.naming, F.text)
    return router
