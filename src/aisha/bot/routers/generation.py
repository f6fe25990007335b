"""Image generation: a prompt (any text outside a wizard, /generate) or a photo (/like) → options
with the price → confirm → the `generation.run` job; the buttons under results; /gallery.

Thin: every rule (prices, holds, limits, ownership) lives in GenerationService. The draft being
configured lives in the FSM data (no FSM state, so it never blocks other features); its id is in
every options button, so an old options message can't confirm a newer draft.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import F, Router, html
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Message,
)
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.models import Avatar, AvatarType
from aisha.billing.errors import InsufficientCredits
from aisha.bot import resume
from aisha.bot.keyboards import MAIN_MENU, menu_button
from aisha.bot.paywall import insufficient_keyboard, insufficient_text, price_line, show_packages
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.db.session import after_commit
from aisha.generation.errors import (
    AvatarNotReady,
    EmptyPrompt,
    FreeRegenerationUnavailable,
    GenerationNotFound,
    GenerationUnavailable,
    PromptTooLong,
    TooManyInFlight,
    WrongGenerationStatus,
)
from aisha.generation.service import (
    ASPECT_RATIOS,
    DEFAULT_RATIO,
    MAX_IMAGES,
    NEW_CALLBACK,
    AvatarChoice,
    GalleryCard,
    GenerationRequest,
    Source,
    action_callback,
)
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services
    from aisha.generation.service import GenerationService

log = structlog.get_logger(__name__)
DRAFT_KEY = "gen_draft"
CHOSEN_AVATAR_KEY = "gen_avatar"  # the avatar a "Create image" button was pressed for
RATIOS = list(ASPECT_RATIOS)  # buttons carry the index: ":" separates callback fields
AVATARS_NEW_CALLBACK = "avw:new"  # the avatars feature's "create an avatar" entry
PROMPT_EXCERPT = 400


# An avatar's trigger token (avatars.service.new_trigger_phrase: "ohwx" and 10 hex digits) is how
# the model knows the avatar; to a person it is noise, so the prompt shown never carries it.
TRIGGER_PATTERN = r"\bohwx[0-9a-f]{10}\b"


class GenOption(CallbackData, prefix="gopt"):
    draft: str
    # r: ratio, n: images, na: without avatar, av: list the avatars, a: this avatar (value: its
    # id in hex; 48 bytes in all), b: back to the options, go: confirm, top: top up first, x: cancel
    field: str
    value: str = ""


class GenAction(CallbackData, prefix="gact"):
    """Buttons under results (built by the service with `action_callback`, same shape)."""

    action: str  # regen | like | prompt | del | delyes | keep | free | file
    id: str
    n: int = 0


class GalleryPage(CallbackData, prefix="gal"):
    offset: int


def readable_prompt(enhanced: str, trigger: str | None) -> str:
    """The prompt the model got, as a person reads it: "me" where a portrait's token stood, "my
    avatar" for a style's (also for the tokens of avatars deleted since)."""
    token = f"{re.escape(trigger)}|{TRIGGER_PATTERN}" if trigger else TRIGGER_PATTERN
    text = re.sub(rf"in the style of (?:{token})", "in the style of my avatar", enhanced, flags=re.IGNORECASE)
    return re.sub(token, "me", text, flags=re.IGNORECASE)


def _excerpt(text: str, limit: int = PROMPT_EXCERPT) -> str:
    """The prompt on one line, at most ``limit`` UTF-16 units as Telegram counts them (an emoji is
    two), ending in "…" when cut, escaped for HTML."""
    text = " ".join(text.split())
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return html.quote(text)
    kept, units = [], 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > limit - 1:
            break
        kept.append(char)
        units += width
    return html.quote("".join(kept).rstrip() + "…")


def too_many_text(t: Texts, error: TooManyInFlight) -> str:
    return t("generation.too_many", running=error.running, limit=error.limit)


def _marked(selected: bool, label: str) -> str:
    return f"• {label} •" if selected else label


def options_keyboard(
    t: Texts, draft: dict[str, Any], price: int, balance: int, *, avatars: int = 0
) -> InlineKeyboardMarkup:
    """`avatars`: how many ready avatars the user has (another one can be chosen on the card)."""
    draft_id = str(draft["id"])
    ratios = [
        InlineKeyboardButton(
            text=_marked(ratio == draft["ratio"], ratio),
            callback_data=GenOption(draft=draft_id, field="r", value=str(i)).pack(),
        )
        for i, ratio in enumerate(RATIOS)
    ]
    counts = [
        InlineKeyboardButton(
            text=_marked(n == draft["n"], str(n)),
            callback_data=GenOption(draft=draft_id, field="n", value=str(n)).pack(),
        )
        for n in range(1, MAX_IMAGES + 1)
    ]
    # A balance that doesn't cover the price gets the top-up at once, not a refusal after the press.
    covered = price <= balance
    go = InlineKeyboardButton(
        text=t("generation.button.go" if covered else "generation.button.topup", price=price),
        callback_data=GenOption(draft=draft_id, field="go" if covered else "top").pack(),
    )
    cancel = InlineKeyboardButton(
        text=t("generation.button.cancel"), callback_data=GenOption(draft=draft_id, field="x").pack()
    )
    rows = [ratios, counts]
    if avatars > 1 or (avatars and not draft.get("avatar_id")):
        switch = InlineKeyboardButton(
            text=t("generation.button.switch_avatar"),
            callback_data=GenOption(draft=draft_id, field="av").pack(),
        )
        rows.append([switch])
    return InlineKeyboardMarkup(inline_keyboard=[*rows, [go], [cancel]])


def avatars_keyboard(t: Texts, draft: dict[str, Any], avatars: list[AvatarChoice]) -> InlineKeyboardMarkup:
    """The card's avatar choice: each ready avatar (the current one marked), and back."""
    draft_id = str(draft["id"])
    rows = [
        [
            InlineKeyboardButton(
                text=_marked(avatar.id.hex == draft.get("avatar_id"), avatar.name),
                callback_data=GenOption(draft=draft_id, field="a", value=avatar.id.hex).pack(),
            )
        ]
        for avatar in avatars
    ]
    back = InlineKeyboardButton(
        text=t("generation.button.back"), callback_data=GenOption(draft=draft_id, field="b").pack()
    )
    return InlineKeyboardMarkup(inline_keyboard=[*rows, [back]])


def gallery_caption(t: Texts, card: GalleryCard) -> str:
    return t(
        "generation.gallery.card",
        position=card.offset + 1,
        total=card.total,
        date=card.created_at.strftime(t("billing.date_format")),
        prompt=_excerpt(card.prompt, 600),
        images=t("generation.gallery.images", count=card.images),
        cost=card.cost,
    )


def gallery_keyboard(t: Texts, card: GalleryCard) -> InlineKeyboardMarkup:
    navigation = []
    if card.offset > 0:
        navigation.append(
            InlineKeyboardButton(
                text=t("generation.button.newer"), callback_data=GalleryPage(offset=card.offset - 1).pack()
            )
        )
    if card.offset + 1 < card.total:
        navigation.append(
            InlineKeyboardButton(
                text=t("generation.button.older"), callback_data=GalleryPage(offset=card.offset + 1).pack()
            )
        )
    rows = [navigation] if navigation else []
    rows.append(
        [
            InlineKeyboardButton(
                text=t("generation.button.file"), callback_data=action_callback("file", card.id)
            ),
            InlineKeyboardButton(
                text=t("generation.button.regenerate"), callback_data=action_callback("regen", card.id)
            ),
        ]
    )
    rows.append(
        [
            InlineKeyboardButton(
                text=t("generation.button.delete"), callback_data=action_callback("del", card.id)
            )
        ]
    )
    return InlineKeyboardMarkup(inline_keyboard=rows)


def create_router(services: Services) -> Router:
    router = Router(name="generation")
    service: GenerationService = services.generation
    ledger = services.ledger
    translator = services.translator
    menu_texts = {
        translator.get(locale, key) for locale in translator.locales for row in MAIN_MENU for key in row
    }

    # --- drafts and options ------------------------------------------------------------------

    async def options_text(
        session: AsyncSession, user: User, t: Texts, draft: dict[str, Any]
    ) -> tuple[str, int, int]:
        """The card's text, its price and the balance."""
        source = Source(draft["source"])
        with_avatar = draft.get("avatar_id") is not None
        price = service.quote(num_images=int(draft["n"]), with_avatar=with_avatar, source=source)
        lines = []
        if source is Source.TEXT:
            lines.append(t("generation.options.prompt", prompt=_excerpt(str(draft["prompt"]))))
        elif source is Source.PHOTO:
            lines.append(t("generation.options.photo"))
        elif source is Source.LIKE:
            lines.append(t("generation.options.like", n=int(draft.get("index", 0)) + 1))
        else:
            lines.append(t("generation.options.regenerate", prompt=_excerpt(str(draft["prompt"]))))
        if with_avatar:
            kind = draft.get("avatar_type", AvatarType.PORTRAIT.value)  # drafts saved before it was kept
            lines.append(
                t(f"generation.options.avatar.{kind}", name=html.quote(str(draft.get("avatar_name", ""))))
            )
        else:
            lines.append(t("generation.options.no_avatar"))
        lines.append("")
        lines.append(t("generation.options.settings", ratio=draft["ratio"], n=draft["n"]))
        if source.needs_vision:
            lines.append(t("generation.options.vision_price", price=services.prices.photo_to_prompt))
        balance = await ledger.get_balance(session=session, user_id=user.telegram_id)
        lines.append(price_line(t, price=price, balance=balance))
        return "\n".join(lines), price, balance

    async def start_draft(
        message: Message,
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
        if not service.available:
            await message.answer(t("generation.unavailable"))
            return
        if source.needs_vision and not service.vision_available:
            await message.answer(t("generation.vision_unavailable"))
            return
        draft: dict[str, Any] = {
            "id": secrets.token_hex(4),
            "source": source.value,
            "prompt": "",
            "ratio": DEFAULT_RATIO,
            "n": 1,
            "file_id": file_id,
            "from": from_generation.hex if from_generation else None,
            "index": index,
            "avatar_id": None,
        }
        avatar = None
        if source is Source.TEXT:
            try:
                draft["prompt"] = service.check_prompt(prompt)
            except EmptyPrompt:
                await message.answer(t("generation.empty_prompt"))
                return
            except PromptTooLong as error:
                await message.answer(t("generation.prompt_too_long", length=error.length, limit=error.limit))
                return
        if from_generation is not None:
            try:
                row = await service.get(
                    session=session, user_id=user.telegram_id, generation_id=from_generation
                )
            except GenerationNotFound:
                await message.answer(t("generation.not_found"))
                return
            if source is Source.LIKE and not 0 <= index < len(row.results):
                await message.answer(t("generation.not_found"))
                return
            if source is Source.REGENERATE:
                draft |= {
                    "prompt": row.prompt,
                    "ratio": row.config.get("aspect_ratio", DEFAULT_RATIO),
                    "n": int(row.config.get("num_images", 1)),
                }
                # The same avatar as before (none if it was deleted since).
                if row.avatar_id is not None:
                    avatar = await service.avatar_choice(
                        session=session, user_id=user.telegram_id, avatar_id=row.avatar_id
                    )
        if source is not Source.REGENERATE:
            # The avatar whose "Create image" button was pressed (for this one card), if it is
            # still there; else the main one.
            chosen = parse_uuid(str((await state.get_data()).get(CHOSEN_AVATAR_KEY) or ""))
            await state.update_data({CHOSEN_AVATAR_KEY: None})
            if chosen is not None:
                avatar = await service.avatar_choice(
                    session=session, user_id=user.telegram_id, avatar_id=chosen
                )
            if avatar is None:
                avatar = await service.main_avatar(session=session, user_id=user.telegram_id)
        if avatar is not None:
            draft |= {
                "avatar_id": avatar.id.hex,
                "avatar_name": avatar.name,
                "avatar_type": avatar.type.value,
            }
        await state.update_data({DRAFT_KEY: draft})
        if avatar is None and source is not Source.REGENERATE:
            keyboard = InlineKeyboardMarkup(
                inline_keyboard=[
                    [
                        InlineKeyboardButton(
                            text=t("generation.button.create_avatar"), callback_data=AVATARS_NEW_CALLBACK
                        )
                    ],
                    [
                        InlineKeyboardButton(
                            text=t("generation.button.without_avatar"),
                            callback_data=GenOption(draft=draft["id"], field="na").pack(),
                        )
                    ],
                ]
            )
            price = service.unit_price(with_avatar=False)
            await message.answer(t("generation.no_avatar", price=price), reply_markup=keyboard)
            return
        text, price, balance = await options_text(session, user, t, draft)
        await message.answer(text, reply_markup=await card_keyboard(session, user, t, draft, price, balance))

    async def card_keyboard(
        session: AsyncSession, user: User, t: Texts, draft: dict[str, Any], price: int, balance: int
    ) -> InlineKeyboardMarkup:
        avatars = await service.ready_avatars(session=session, user_id=user.telegram_id)
        return options_keyboard(t, draft, price, balance, avatars=len(avatars))

    @router.callback_query(GenOption.filter())
    async def option(
        query: CallbackQuery,
        callback_data: GenOption,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        data = await state.get_data()
        draft = data.get(DRAFT_KEY)
        message = query.message
        if (
            not isinstance(draft, dict)
            or draft.get("id") != callback_data.draft
            or not isinstance(message, Message)
        ):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        field, value = callback_data.field, callback_data.value
        if field == "x":
            await state.update_data({DRAFT_KEY: None})
            await message.edit_text(t("generation.cancelled"))
            await query.answer()
            return
        if field == "go":
            await confirm(query, message, session, user, t, state, draft)
            return
        if field == "top":  # the balance is short: remember the card, open the top-up
            await resume.remember(state, kind=IntentKind.GENERATION, data=draft, now=services.clock.now())
            await query.answer()
            await show_packages(message, t, services.payments.packages)
            return
        if field == "av":
            avatars = await service.ready_avatars(session=session, user_id=user.telegram_id)
            await message.edit_reply_markup(reply_markup=avatars_keyboard(t, draft, avatars))
            await query.answer()
            return
        if field == "a":
            chosen_id = parse_uuid(value)
            chosen = None
            if chosen_id is not None:
                chosen = await service.avatar_choice(
                    session=session, user_id=user.telegram_id, avatar_id=chosen_id
                )
            if chosen is None:  # tampered, someone else's, or deleted since: nothing changes
                await query.answer(t("generation.avatar_gone"), show_alert=True)
                return
            draft |= {
                "avatar_id": chosen.id.hex,
                "avatar_name": chosen.name,
                "avatar_type": chosen.type.value,
            }
        elif field == "b":
            pass  # back to the options as they were
        elif field == "r" and value.isdigit() and int(value) < len(RATIOS):
            draft["ratio"] = RATIOS[int(value)]
        elif field == "n" and value.isdigit() and 1 <= int(value) <= MAX_IMAGES:
            draft["n"] = int(value)
        elif field == "na":
            draft["avatar_id"] = None
        else:
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        await state.update_data({DRAFT_KEY: draft})
        text, price, balance = await options_text(session, user, t, draft)
        keyboard = await card_keyboard(session, user, t, draft, price, balance)
        if field == "b":
            await message.edit_reply_markup(reply_markup=keyboard)  # the text did not change
        else:
            await message.edit_text(text, reply_markup=keyboard)
        await query.answer()

    async def confirm(
        query: CallbackQuery,
        message: Message,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
        draft: dict[str, Any],
    ) -> None:
        """The one way a draft is confirmed: its card's button, or "Continue" after a top-up."""
        source = Source(draft["source"])
        request = GenerationRequest(
            source=source,
            aspect_ratio=str(draft["ratio"]),
            num_images=int(draft["n"]),
            prompt=str(draft.get("prompt") or ""),
            avatar_id=uuid.UUID(draft["avatar_id"]) if draft.get("avatar_id") else None,
            source_file_id=draft.get("file_id"),
            source_generation_id=uuid.UUID(draft["from"]) if draft.get("from") else None,
            source_index=int(draft.get("index", 0)),
        )
        if not await services.locks.hold_for(session, user_id=user.telegram_id):
            await query.answer(t("limits.busy"), show_alert=True)
            return
        try:
            generation = await service.create(session=session, user_id=user.telegram_id, request=request)
        except InsufficientCredits as error:
            # Remembered (nothing is held for it): a top-up offers to continue it.
            await resume.remember(state, kind=IntentKind.GENERATION, data=draft, now=services.clock.now())
            await message.edit_text(insufficient_text(t, error), reply_markup=insufficient_keyboard(t))
            await query.answer()
            return
        except TooManyInFlight as error:
            await query.answer(too_many_text(t, error), show_alert=True)
            return
        except AvatarNotReady:
            await message.edit_text(t("generation.avatar_gone"))
            await query.answer()
            return
        except GenerationNotFound:
            await query.answer(t("generation.not_found"), show_alert=True)
            return
        except GenerationUnavailable:
            await query.answer(t("generation.unavailable"), show_alert=True)
            return
        except (EmptyPrompt, PromptTooLong, ValueError):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        current = (await state.get_data()).get(DRAFT_KEY)
        if isinstance(current, dict) and current.get("id") == draft["id"]:
            await state.update_data({DRAFT_KEY: None})  # a newer card stays usable
        await resume.forget_matching(state, kind=IntentKind.GENERATION, key="id", value=draft["id"])
        # The options message becomes the one status message the job keeps editing (written
        # before any Bot API call, so the update's work is complete when Telegram is called).
        await service.set_status_message(
            session=session, generation=generation, message_id=message.message_id
        )
        generation_id = generation.id
        after_commit(session, lambda: service.enqueue(generation_id))
        await message.edit_text(t("generation.status.queued"))
        await query.answer()

    @router.callback_query(Resume.filter(F.kind == IntentKind.GENERATION))
    async def resume_generation(
        query: CallbackQuery,
        callback_data: Resume,
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
        await confirm(query, query.message, session, user, t, state, intent.data)

    # --- entry points ----------------------------------------------------------------------------

    @router.message(Command("generate"))
    async def generate_command(
        message: Message,
        command: CommandObject,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        if command.args and command.args.strip():
            await start_draft(message, session, user, t, state, source=Source.TEXT, prompt=command.args)
        else:
            await message.answer(t("generation.ask_prompt"))

    @router.message(menu_button(translator, "menu.generate"))
    async def generate_button(message: Message, t: Texts) -> None:
        await message.answer(t("generation.ask_prompt"))

    @router.callback_query(F.data == NEW_CALLBACK)
    async def generate_new(query: CallbackQuery, t: Texts, state: FSMContext) -> None:
        await state.update_data({CHOSEN_AVATAR_KEY: None})
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.answer(t("generation.ask_prompt"))

    @router.callback_query(F.data.startswith(NEW_CALLBACK + ":"))
    async def generate_with_avatar(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        """ "Create image" under a newly ready avatar: the next card is for that avatar."""
        avatar_id = parse_uuid(str(query.data).removeprefix(NEW_CALLBACK + ":"))
        if avatar_id is None:  # tampered: nothing changes
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        avatar = await service.avatar_choice(session=session, user_id=user.telegram_id, avatar_id=avatar_id)
        if avatar is None:  # another user's, or deleted since: nothing changes
            await query.answer(t("generation.avatar_gone"), show_alert=True)
            return
        await state.update_data({CHOSEN_AVATAR_KEY: avatar.id.hex})
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.answer(t("generation.ask_prompt_for", name=html.quote(avatar.name)))

    @router.message(Command("like"))
    async def like_command(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        photo = message.photo or (message.reply_to_message.photo if message.reply_to_message else None)
        if not photo:
            await message.answer(t("generation.like_hint"))
            return
        await start_draft(message, session, user, t, state, source=Source.PHOTO, file_id=photo[-1].file_id)

    # A bare photo (or free text below) is taken only when it can be served; otherwise it falls
    # through to the fallback, as before this feature.
    can_like = service.available and service.vision_available

    @router.message(StateFilter(None), F.photo, F.chat.type == "private", F.func(lambda _: can_like))
    async def photo_reference(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        assert message.photo is not None
        await start_draft(
            message, session, user, t, state, source=Source.PHOTO, file_id=message.photo[-1].file_id
        )

    # --- buttons under results -------------------------------------------------------------------

    @router.callback_query(GenAction.filter())
    async def act(
        query: CallbackQuery,
        callback_data: GenAction,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        generation_id = parse_uuid(callback_data.id)
        message = query.message
        if generation_id is None or not isinstance(message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        try:
            await _act(query, callback_data, generation_id, message, session, user, t, state)
        except GenerationNotFound:
            log.warning(
                "generation.foreign_or_missing", user_id=user.telegram_id, action=callback_data.action
            )
            await query.answer(t("generation.not_found"), show_alert=True)

    async def _act(
        query: CallbackQuery,
        data: GenAction,
        generation_id: uuid.UUID,
        message: Message,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        user_id = user.telegram_id
        action = data.action
        if action in ("regen", "like"):
            # Ownership first, so a foreign id gets the alert and nothing else.
            await service.get(session=session, user_id=user_id, generation_id=generation_id)
        if action == "regen":
            await query.answer()
            await start_draft(
                message, session, user, t, state, source=Source.REGENERATE, from_generation=generation_id
            )
        elif action == "like":
            await query.answer()
            await start_draft(
                message,
                session,
                user,
                t,
                state,
                source=Source.LIKE,
                from_generation=generation_id,
                index=data.n,
            )
        elif action == "prompt":
            row = await service.get(session=session, user_id=user_id, generation_id=generation_id)
            avatar = await session.get(Avatar, row.avatar_id) if row.avatar_id else None
            await query.answer()
            if row.enhanced_prompt is None:
                await message.answer(t("generation.prompt_pending"))
                return
            enhanced = readable_prompt(row.enhanced_prompt, avatar.trigger_phrase if avatar else None)
            await message.answer(
                t("generation.prompt_shown", prompt=_excerpt(row.prompt, 1500), enhanced=html.quote(enhanced))
            )
        elif action == "del":
            await service.get(session=session, user_id=user_id, generation_id=generation_id)
            await query.answer()
            keyboard = InlineKeyboardMarkup(
                inline_keyboard=[
                    [
                        InlineKeyboardButton(
                            text=t("generation.button.delete_yes"),
                            callback_data=action_callback("delyes", generation_id),
                        ),
                        InlineKeyboardButton(
                            text=t("generation.button.keep"),
                            callback_data=action_callback("keep", generation_id),
                        ),
                    ]
                ]
            )
            await message.answer(t("generation.delete_confirm"), reply_markup=keyboard)
        elif action == "delyes":
            try:
                await service.delete(session=session, user_id=user_id, generation_id=generation_id)
            except WrongGenerationStatus:
                await query.answer(t("generation.in_flight"), show_alert=True)
                return
            await message.edit_text(t("generation.deleted"))
            await query.answer()
        elif action == "keep":
            await message.edit_text(t("generation.kept"))
            await query.answer()
        elif action == "free":
            if not await services.locks.hold_for(session, user_id=user_id):
                await query.answer(t("limits.busy"), show_alert=True)
                return
            try:
                generation = await service.take_free_regeneration(
                    session=session, user_id=user_id, generation_id=generation_id
                )
            except FreeRegenerationUnavailable:
                await query.answer(t("generation.free_unavailable"), show_alert=True)
                return
            except TooManyInFlight as error:
                await query.answer(too_many_text(t, error), show_alert=True)
                return
            except (AvatarNotReady, GenerationUnavailable):
                await query.answer(t("generation.unavailable"), show_alert=True)
                return
            # The offer's message becomes the status message: its id is known before Telegram
            # is called, so nothing is written after.
            await service.set_status_message(
                session=session, generation=generation, message_id=message.message_id
            )
            new_id = generation.id
            after_commit(session, lambda: service.enqueue(new_id))
            await message.edit_text(t("generation.status.queued"))
            await query.answer()
        elif action == "file":
            files = await service.images(session=session, user_id=user_id, generation_id=generation_id)
            await query.answer()
            for name, data_bytes in files:
                await message.answer_document(BufferedInputFile(data_bytes, filename=name))
        else:
            await query.answer(t("errors.bad_button"), show_alert=True)

    # --- gallery -------------------------------------------------------------------------------

    async def gallery_card(
        session: AsyncSession, user: User, offset: int
    ) -> tuple[GalleryCard, bytes] | None:
        card = await service.gallery(session=session, user_id=user.telegram_id, offset=offset)
        if card is None:
            return None
        return card, await service.read(card.first_key)

    @router.message(Command("gallery"))
    @router.message(menu_button(translator, "menu.gallery"))
    async def gallery(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        found = await gallery_card(session, user, 0)
        if found is None:
            await message.answer(t("generation.gallery.empty"))
            return
        card, image = found
        await message.answer_photo(
            BufferedInputFile(image, filename="image.png"),
            caption=gallery_caption(t, card),
            reply_markup=gallery_keyboard(t, card),
        )

    @router.callback_query(GalleryPage.filter())
    async def gallery_page(
        query: CallbackQuery, callback_data: GalleryPage, session: AsyncSession, user: User, t: Texts
    ) -> None:
        message = query.message
        if callback_data.offset < 0 or not isinstance(message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        found = await gallery_card(session, user, callback_data.offset)
        await query.answer()
        if found is None:
            await message.answer(t("generation.gallery.empty"))
            return
        card, image = found
        media = InputMediaPhoto(
            media=BufferedInputFile(image, filename="image.png"), caption=gallery_caption(t, card)
        )
        try:
            await message.edit_media(media, reply_markup=gallery_keyboard(t, card))
        except TelegramBadRequest:
            # Not a photo message (or too old to edit): show the card anew.
            await message.answer_photo(
                BufferedInputFile(image, filename="image.png"),
                caption=gallery_caption(t, card),
                reply_markup=gallery_keyboard(t, card),
            )

    # --- any text outside a wizard: a prompt (below every other feature, above the fallback) -----

    @router.message(
        StateFilter(None),
        F.chat.type == "private",
        F.text,
        ~F.text.startswith("/"),
        ~F.text.in_(menu_texts),
        F.func(lambda _: service.available),
    )
    async def prompt_text(
        message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        assert message.text is not None
        await start_draft(message, session, user, t, state, source=Source.TEXT, prompt=message.text)

    return router
