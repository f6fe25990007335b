"""The buttons under results (regenerate, more like this, the prompt, delete, the free
regeneration, the files) and the gallery. Ownership is the service's to check."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import html
from aiogram.exceptions import TelegramBadRequest
from aiogram.fsm.context import FSMContext
from aiogram.types import BufferedInputFile, CallbackQuery, InputMediaPhoto, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot.presenters.generation import (
    GalleryPage,
    GenAction,
    delete_keyboard,
    excerpt,
    gallery_caption,
    gallery_keyboard,
    readable_prompt,
    too_many_text,
)
from aisha.bot.routers.generation.cards import start_draft
from aisha.db.base import parse_uuid
from aisha.generation.errors import (
    AvatarNotReady,
    FreeRegenerationUnavailable,
    GenerationNotFound,
    GenerationUnavailable,
    TooManyInFlight,
    WrongGenerationStatus,
)
from aisha.generation.models import GalleryCard, Source
from aisha.i18n import Texts
from aisha.operations import Busy
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

log = structlog.get_logger(__name__)


# --- buttons under results -------------------------------------------------------------------


async def act(
    query: CallbackQuery,
    callback_data: GenAction,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    generation_id = parse_uuid(callback_data.id)
    message = query.message
    handler = _ACTIONS.get(callback_data.action)
    if generation_id is None or not isinstance(message, Message) or handler is None:
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    try:
        await handler(
            _Pressed(query, callback_data, generation_id, message, services, session, user, t, state)
        )
    except GenerationNotFound:
        log.warning("generation.foreign_or_missing", user_id=user.telegram_id, action=callback_data.action)
        await query.answer(t("generation.not_found"), show_alert=True)


class _Pressed:
    """One press of a button under a result, with what its handler needs."""

    def __init__(
        self,
        query: CallbackQuery,
        data: GenAction,
        generation_id: uuid.UUID,
        message: Message,
        services: Services,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        self.query, self.data, self.generation_id, self.message = query, data, generation_id, message
        self.services, self.session, self.user, self.t, self.state = services, session, user, t, state
        self.service = services.generation
        self.user_id = user.telegram_id

    async def own(self) -> Any:
        """The generation, checked to be the user's first: a foreign id gets the alert and nothing else."""
        return await self.service.get(
            session=self.session, user_id=self.user_id, generation_id=self.generation_id
        )

    async def draft(self, source: Source, index: int = 0) -> None:
        await self.own()
        await self.query.answer()
        await start_draft(
            self.message,
            self.services,
            self.session,
            self.user,
            self.t,
            self.state,
            source=source,
            from_generation=self.generation_id,
            index=index,
        )


async def _regenerate(p: _Pressed) -> None:
    await p.draft(Source.REGENERATE)


async def _like(p: _Pressed) -> None:
    await p.draft(Source.LIKE, p.data.n)


async def _show_prompt(p: _Pressed) -> None:
    row = await p.own()
    trigger = await p.service.trigger_phrase(session=p.session, avatar_id=row.avatar_id)
    await p.query.answer()
    if row.enhanced_prompt is None:
        await p.message.answer(p.t("generation.prompt_pending"))
        return
    enhanced = readable_prompt(row.enhanced_prompt, trigger)
    await p.message.answer(
        p.t("generation.prompt_shown", prompt=excerpt(row.prompt, 1500), enhanced=html.quote(enhanced))
    )


async def _ask_delete(p: _Pressed) -> None:
    await p.own()
    await p.query.answer()
    await p.message.answer(
        p.t("generation.delete_confirm"), reply_markup=delete_keyboard(p.t, p.generation_id)
    )


async def _delete(p: _Pressed) -> None:
    try:
        await p.service.delete(session=p.session, user_id=p.user_id, generation_id=p.generation_id)
    except WrongGenerationStatus:
        await p.query.answer(p.t("generation.in_flight"), show_alert=True)
        return
    await p.message.edit_text(p.t("generation.deleted"))
    await p.query.answer()


async def _keep(p: _Pressed) -> None:
    await p.message.edit_text(p.t("generation.kept"))
    await p.query.answer()


async def _free(p: _Pressed) -> None:
    try:
        # The offer's message becomes the status message.
        await p.service.start_free_regeneration(
            session=p.session,
            user_id=p.user_id,
            generation_id=p.generation_id,
            status_message_id=p.message.message_id,
        )
    except FreeRegenerationUnavailable:
        await p.query.answer(p.t("generation.free_unavailable"), show_alert=True)
        return
    except (Busy, TooManyInFlight, AvatarNotReady, GenerationUnavailable) as error:
        text = p.t("limits.busy") if isinstance(error, Busy) else p.t("generation.unavailable")
        if isinstance(error, TooManyInFlight):
            text = too_many_text(p.t, error)
        await p.query.answer(text, show_alert=True)
        return
    await p.message.edit_text(p.t("generation.status.queued"))
    await p.query.answer()


async def _files(p: _Pressed) -> None:
    files = await p.service.images(session=p.session, user_id=p.user_id, generation_id=p.generation_id)
    await p.query.answer()
    for name, data in files:
        await p.message.answer_document(BufferedInputFile(data, filename=name))


_ACTIONS = {
    "regen": _regenerate,
    "like": _like,
    "prompt": _show_prompt,
    "del": _ask_delete,
    "delyes": _delete,
    "keep": _keep,
    "free": _free,
    "file": _files,
}


# --- gallery ---------------------------------------------------------------------------------


async def _gallery_card(
    services: Services, session: AsyncSession, user: User, offset: int
) -> tuple[GalleryCard, BufferedInputFile] | None:
    card = await services.generation.gallery(session=session, user_id=user.telegram_id, offset=offset)
    if card is None:
        return None
    return card, BufferedInputFile(await services.generation.read(card.first_key), filename="image.png")


async def gallery(message: Message, services: Services, session: AsyncSession, user: User, t: Texts) -> None:
    found = await _gallery_card(services, session, user, 0)
    if found is None:
        await message.answer(t("generation.gallery.empty"))
        return
    card, image = found
    await message.answer_photo(
        image, caption=gallery_caption(t, card), reply_markup=gallery_keyboard(t, card)
    )


async def gallery_page(
    query: CallbackQuery,
    callback_data: GalleryPage,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
) -> None:
    message = query.message
    if callback_data.offset < 0 or not isinstance(message, Message):
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    found = await _gallery_card(services, session, user, callback_data.offset)
    await query.answer()
    if found is None:
        await message.answer(t("generation.gallery.empty"))
        return
    card, image = found
    try:
        media = InputMediaPhoto(media=image, caption=gallery_caption(t, card))
        await message.edit_media(media, reply_markup=gallery_keyboard(t, card))
    except TelegramBadRequest:
        # Not a photo message (or too old to edit): show the card anew.
        await message.answer_photo(
            image, caption=gallery_caption(t, card), reply_markup=gallery_keyboard(t, card)
        )
