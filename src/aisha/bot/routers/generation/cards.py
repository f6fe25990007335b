"""Image generation's cards: a prompt (any text outside a wizard, /generate) or a photo (/like) → options
with the price → confirm → the `generation.run` job; the buttons under results; /gallery.

Thin: every rule (prices, holds, limits, ownership, what a prompt may be) lives in
GenerationService, every text and keyboard in `bot.presenters.generation`. The draft being
configured lives in the FSM data (no FSM state, so it never blocks other features); its id is in
every options button, so an old options message can't confirm a newer draft.
"""

from __future__ import annotations

import secrets
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import html
from aiogram.filters import CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.errors import InsufficientCredits
from aisha.bot import resume
from aisha.bot.paywall import insufficient_keyboard, insufficient_text, show_packages
from aisha.bot.presenters.generation import (
    NEW_CALLBACK,
    RATIOS,
    GenOption,
    avatars_keyboard,
    no_avatar_keyboard,
    options_keyboard,
    options_text,
    too_many_text,
)
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.generation.errors import (
    AvatarNotReady,
    EmptyPrompt,
    GenerationError,
    GenerationNotFound,
    GenerationUnavailable,
    InvalidRequest,
    PromptTooLong,
    TooManyInFlight,
    VisionUnavailable,
)
from aisha.generation.models import DraftBasis, GenerationRequest, Source
from aisha.i18n import Texts
from aisha.operations import Busy
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

log = structlog.get_logger(__name__)
DRAFT_KEY = "gen_draft"
CHOSEN_AVATAR_KEY = "gen_avatar"  # the avatar a "Create image" button was pressed for


# --- drafts and options ----------------------------------------------------------------------


async def card(
    services: Services, session: AsyncSession, user: User, t: Texts, draft: dict[str, Any]
) -> tuple[str, InlineKeyboardMarkup]:
    """The card's text and keyboard for `draft`, priced against the user's balance."""
    service = services.generation
    price = service.quote(
        num_images=int(draft["n"]),
        with_avatar=draft.get("avatar_id") is not None,
        source=Source(draft["source"]),
    )
    balance = await services.ledger.get_balance(session=session, user_id=user.telegram_id)
    text = options_text(t, draft, price=price, balance=balance, vision_price=service.photo_to_prompt_price)
    avatars = await service.ready_avatars(session=session, user_id=user.telegram_id)
    return text, options_keyboard(t, draft, price, balance, avatars=len(avatars))


def _draft_error(t: Texts, error: GenerationError) -> str:
    if isinstance(error, VisionUnavailable):
        return t("generation.vision_unavailable")
    if isinstance(error, GenerationUnavailable):
        return t("generation.unavailable")
    if isinstance(error, EmptyPrompt):
        return t("generation.empty_prompt")
    if isinstance(error, PromptTooLong):
        return t("generation.prompt_too_long", length=error.length, limit=error.limit)
    return t("generation.not_found")


def _new_draft(
    basis: DraftBasis, source: Source, file_id: str | None, from_generation: uuid.UUID | None, index: int
) -> dict[str, Any]:
    """The card being configured, as the FSM keeps it (its id is in every button of the card)."""
    draft: dict[str, Any] = {
        "id": secrets.token_hex(4),
        "source": source.value,
        "prompt": basis.prompt,
        "ratio": basis.ratio,
        "n": basis.num_images,
        "file_id": file_id,
        "from": from_generation.hex if from_generation else None,
        "index": index,
        "avatar_id": None,
    }
    if basis.avatar is not None:
        draft |= {
            "avatar_id": basis.avatar.id.hex,
            "avatar_name": basis.avatar.name,
            "avatar_type": basis.avatar.type.value,
        }
    return draft


async def start_draft(
    message: Message,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
    *,
    source: Source,
    prompt: str = "",
    file_id: str | None = None,
    from_generation: uuid.UUID | None = None,
    index: int = 0,
) -> None:
    """A new options card (or the choice to create an avatar first, without one)."""
    chosen = parse_uuid(str((await state.get_data()).get(CHOSEN_AVATAR_KEY) or ""))
    try:
        basis = await services.generation.prepare(
            session=session,
            user_id=user.telegram_id,
            source=source,
            prompt=prompt,
            from_generation=from_generation,
            index=index,
            chosen_avatar=chosen,
        )
    except (GenerationUnavailable, EmptyPrompt, PromptTooLong, GenerationNotFound) as error:
        await message.answer(_draft_error(t, error))
        return
    if source is not Source.REGENERATE:
        await state.update_data({CHOSEN_AVATAR_KEY: None})  # for this one card
    draft = _new_draft(basis, source, file_id, from_generation, index)
    await state.update_data({DRAFT_KEY: draft})
    if basis.avatar is None and source is not Source.REGENERATE:
        price = services.generation.unit_price(with_avatar=False)
        await message.answer(
            t("generation.no_avatar", price=price), reply_markup=no_avatar_keyboard(t, draft["id"])
        )
        return
    text, keyboard = await card(services, session, user, t, draft)
    await message.answer(text, reply_markup=keyboard)


async def _changed(
    services: Services, session: AsyncSession, user: User, draft: dict[str, Any], field: str, value: str
) -> str | None:
    """The draft with one option changed; None for a button no card of ours has, or an error key."""
    service = services.generation
    if field == "a":
        chosen_id = parse_uuid(value)
        chosen = None
        if chosen_id is not None:
            chosen = await service.avatar_choice(
                session=session, user_id=user.telegram_id, avatar_id=chosen_id
            )
        if chosen is None:  # tampered, someone else's, or deleted since: nothing changes
            return "generation.avatar_gone"
        draft |= {"avatar_id": chosen.id.hex, "avatar_name": chosen.name, "avatar_type": chosen.type.value}
    elif field == "na":
        draft["avatar_id"] = None
    elif field in ("r", "n"):
        ratio, count = draft["ratio"], draft["n"]
        if field == "r":
            ratio = RATIOS[int(value)] if value.isdigit() and int(value) < len(RATIOS) else ""
        else:
            count = int(value) if value.isdigit() else 0
        try:
            service.check_options(aspect_ratio=ratio, num_images=count)
        except InvalidRequest:
            return "errors.bad_button"
        draft |= {"ratio": ratio, "n": count}
    elif field != "b":  # b: back to the options as they were
        return "errors.bad_button"
    return None


async def option(
    query: CallbackQuery,
    callback_data: GenOption,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    draft = (await state.get_data()).get(DRAFT_KEY)
    message = query.message
    if (
        not isinstance(draft, dict)
        or draft.get("id") != callback_data.draft
        or not isinstance(message, Message)
    ):
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    field = callback_data.field
    if field == "x":
        await state.update_data({DRAFT_KEY: None})
        await message.edit_text(t("generation.cancelled"))
        await query.answer()
    elif field == "go":
        await confirm(query, message, services, session, user, t, state, draft)
    elif field == "top":  # the balance is short: remember the card, open the top-up
        await resume.remember(state, kind=IntentKind.GENERATION, data=draft, now=services.clock.now())
        await query.answer()
        await show_packages(message, t, services.payments.packages)
    elif field == "av":
        avatars = await services.generation.ready_avatars(session=session, user_id=user.telegram_id)
        await message.edit_reply_markup(reply_markup=avatars_keyboard(t, draft, avatars))
        await query.answer()
    elif (refused := await _changed(services, session, user, draft, field, callback_data.value)) is not None:
        await query.answer(t(refused), show_alert=True)
    else:
        await state.update_data({DRAFT_KEY: draft})
        text, keyboard = await card(services, session, user, t, draft)
        if field == "b":
            await message.edit_reply_markup(reply_markup=keyboard)  # the text did not change
        else:
            await message.edit_text(text, reply_markup=keyboard)
        await query.answer()


def _request(draft: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        source=Source(draft["source"]),
        aspect_ratio=str(draft["ratio"]),
        num_images=int(draft["n"]),
        prompt=str(draft.get("prompt") or ""),
        avatar_id=uuid.UUID(draft["avatar_id"]) if draft.get("avatar_id") else None,
        source_file_id=draft.get("file_id"),
        source_generation_id=uuid.UUID(draft["from"]) if draft.get("from") else None,
        source_index=int(draft.get("index", 0)),
    )


async def _refused(query: CallbackQuery, message: Message, t: Texts, error: Exception) -> None:
    """Why a generation did not start: an alert, or the card replaced by the reason."""
    if isinstance(error, AvatarNotReady):
        await message.edit_text(t("generation.avatar_gone"))
        await query.answer()
        return
    if isinstance(error, Busy):
        text = t("limits.busy")
    elif isinstance(error, TooManyInFlight):
        text = too_many_text(t, error)
    elif isinstance(error, GenerationNotFound):
        text = t("generation.not_found")
    elif isinstance(error, GenerationUnavailable):
        text = t("generation.unavailable")
    else:  # a prompt or an option no card of ours sends
        text = t("errors.bad_button")
    await query.answer(text, show_alert=True)


async def confirm(
    query: CallbackQuery,
    message: Message,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
    draft: dict[str, Any],
) -> None:
    """The one way a draft is confirmed: its card's button, or "Continue" after a top-up."""
    try:
        # The options message becomes the one status message the job keeps editing.
        await services.generation.start(
            session=session,
            user_id=user.telegram_id,
            request=_request(draft),
            status_message_id=message.message_id,
        )
    except InsufficientCredits as error:
        # Remembered (nothing is held for it): a top-up offers to continue it.
        await resume.remember(state, kind=IntentKind.GENERATION, data=draft, now=services.clock.now())
        await message.edit_text(insufficient_text(t, error), reply_markup=insufficient_keyboard(t))
        await query.answer()
        return
    except (Busy, GenerationError, ValueError) as error:
        await _refused(query, message, t, error)
        return
    current = (await state.get_data()).get(DRAFT_KEY)
    if isinstance(current, dict) and current.get("id") == draft["id"]:
        await state.update_data({DRAFT_KEY: None})  # a newer card stays usable
    await resume.forget_matching(state, kind=IntentKind.GENERATION, key="id", value=draft["id"])
    await message.edit_text(t("generation.status.queued"))
    await query.answer()


async def resume_generation(
    query: CallbackQuery,
    callback_data: Resume,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    """ "Continue" after a top-up: the remembered draft, confirmed as its own button would."""
    found, intent = await resume.lookup(state, callback_data, now=services.clock.now())
    if intent is None or not isinstance(query.message, Message):
        await query.answer(t(resume.answer_for(found)), show_alert=True)
        return
    await confirm(query, query.message, services, session, user, t, state, intent.data)


# --- entry points ----------------------------------------------------------------------------


async def generate_command(
    message: Message,
    command: CommandObject,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    if command.args and command.args.strip():
        await start_draft(message, services, session, user, t, state, source=Source.TEXT, prompt=command.args)
    else:
        await message.answer(t("generation.ask_prompt"))


async def ask_prompt(message: Message, t: Texts) -> None:
    await message.answer(t("generation.ask_prompt"))


async def generate_new(query: CallbackQuery, t: Texts, state: FSMContext) -> None:
    await state.update_data({CHOSEN_AVATAR_KEY: None})
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.answer(t("generation.ask_prompt"))


async def generate_with_avatar(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    """ "Create image" under a newly ready avatar: the next card is for that avatar."""
    avatar_id = parse_uuid(str(query.data).removeprefix(NEW_CALLBACK + ":"))
    if avatar_id is None:  # tampered: nothing changes
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    avatar = await services.generation.avatar_choice(
        session=session, user_id=user.telegram_id, avatar_id=avatar_id
    )
    if avatar is None:  # another user's, or deleted since: nothing changes
        await query.answer(t("generation.avatar_gone"), show_alert=True)
        return
    await state.update_data({CHOSEN_AVATAR_KEY: avatar.id.hex})
    await query.answer()
    if isinstance(query.message, Message):
        await query.message.answer(t("generation.ask_prompt_for", name=html.quote(avatar.name)))


async def like_command(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    photo = message.photo or (message.reply_to_message.photo if message.reply_to_message else None)
    if not photo:
        await message.answer(t("generation.like_hint"))
        return
    await start_draft(
        message, services, session, user, t, state, source=Source.PHOTO, file_id=photo[-1].file_id
    )


async def photo_reference(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    assert message.photo is not None
    await start_draft(
        message, services, session, user, t, state, source=Source.PHOTO, file_id=message.photo[-1].file_id
    )


async def prompt_text(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    assert message.text is not None
    await start_draft(message, services, session, user, t, state, source=Source.TEXT, prompt=message.text)
