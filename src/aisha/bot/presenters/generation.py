"""What image generation shows the user: the job's messages (`GenerationPresenter`, the feature's
GenerationEvents), the options card, the buttons under results and their callback data, the
gallery card, and the prompt as a person reads it. Every text comes from the locale files."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Awaitable
from typing import Any, cast

import structlog
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from aisha.avatars.models import AvatarType
from aisha.bot.paywall import price_line
from aisha.generation.errors import TooManyInFlight
from aisha.generation.models import ASPECT_RATIOS, MAX_IMAGES, AvatarChoice, Finished, GalleryCard, Source
from aisha.i18n import Texts, Translator
from aisha.messaging import Button, Messenger
from aisha.storage import ObjectStorage, StorageError

log = structlog.get_logger(__name__)

ACTION_PREFIX = "gact"  # the buttons under results
RATIOS = list(ASPECT_RATIOS)  # buttons carry the index: ":" separates callback fields
AVATARS_NEW_CALLBACK = "avw:new"  # the avatars feature's "create an avatar" entry
NEW_CALLBACK = "gen:new"  # "create an image": the avatars feature shows it too
CAPTION_PROMPT_CHARS = 300
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


class GenAction(CallbackData, prefix=ACTION_PREFIX):
    """Buttons under results (built with `action_callback`, the same shape)."""

    action: str  # regen | like | prompt | del | delyes | keep | free | file
    id: str
    n: int = 0


class GalleryPage(CallbackData, prefix="gal"):
    offset: int


def action_callback(action: str, generation_id: uuid.UUID, n: int = 0) -> str:
    return f"{ACTION_PREFIX}:{action}:{generation_id.hex}:{n}"


def excerpt(text: str, limit: int = PROMPT_EXCERPT) -> str:
    """The prompt on one line, at most ``limit`` UTF-16 units as Telegram counts them (an emoji is
    two), ending in "…" when cut, escaped for HTML."""
    text = " ".join(text.split())
    if len(text.encode("utf-16-le")) // 2 <= limit:
        return html.escape(text, quote=False)
    kept, units = [], 0
    for char in text:
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > limit - 1:
            break
        kept.append(char)
        units += width
    return html.escape("".join(kept).rstrip() + "…", quote=False)


def readable_prompt(enhanced: str, trigger: str | None) -> str:
    """The prompt the model got, as a person reads it: "me" where a portrait's token stood, "my
    avatar" for a style's (also for the tokens of avatars deleted since)."""
    token = f"{re.escape(trigger)}|{TRIGGER_PATTERN}" if trigger else TRIGGER_PATTERN
    text = re.sub(rf"in the style of (?:{token})", "in the style of my avatar", enhanced, flags=re.IGNORECASE)
    return re.sub(token, "me", text, flags=re.IGNORECASE)


def too_many_text(t: Texts, error: TooManyInFlight) -> str:
    return t("generation.too_many", running=error.running, limit=error.limit)


def result_buttons(t: Any, generation_id: uuid.UUID, images: int) -> list[list[Button]]:
    """Regenerate, more like this (one per image of an album), show the prompt, delete."""
    rows = [[Button(t("generation.button.regenerate"), action_callback("regen", generation_id))]]
    if images == 1:
        rows[0].append(Button(t("generation.button.like"), action_callback("like", generation_id, 0)))
    else:
        rows.append(
            [
                Button(t("generation.button.like_n", n=i + 1), action_callback("like", generation_id, i))
                for i in range(images)
            ]
        )
    rows.append(
        [
            Button(t("generation.button.prompt"), action_callback("prompt", generation_id)),
            Button(t("generation.button.delete"), action_callback("del", generation_id)),
        ]
    )
    return rows


# --- the options card ------------------------------------------------------------------------


def _marked(selected: bool, label: str) -> str:
    return f"• {label} •" if selected else label


def options_text(t: Texts, draft: dict[str, Any], *, price: int, balance: int, vision_price: int) -> str:
    """The card: what will be drawn, with which avatar, the settings and the price."""
    source = Source(draft["source"])
    lines = []
    if source is Source.TEXT:
        lines.append(t("generation.options.prompt", prompt=excerpt(str(draft["prompt"]))))
    elif source is Source.PHOTO:
        lines.append(t("generation.options.photo"))
    elif source is Source.LIKE:
        lines.append(t("generation.options.like", n=int(draft.get("index", 0)) + 1))
    else:
        lines.append(t("generation.options.regenerate", prompt=excerpt(str(draft["prompt"]))))
    if draft.get("avatar_id") is not None:
        kind = draft.get("avatar_type", AvatarType.PORTRAIT.value)  # drafts saved before it was kept
        name = html.escape(str(draft.get("avatar_name", "")), quote=False)
        lines.append(t(f"generation.options.avatar.{kind}", name=name))
    else:
        lines.append(t("generation.options.no_avatar"))
    lines.append("")
    lines.append(t("generation.options.settings", ratio=draft["ratio"], n=draft["n"]))
    if source.needs_vision:
        lines.append(t("generation.options.vision_price", price=vision_price))
    lines.append(price_line(t, price=price, balance=balance))
    return "\n".join(lines)


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


def no_avatar_keyboard(t: Texts, draft_id: str) -> InlineKeyboardMarkup:
    """No ready avatar: create one, or go on without."""
    create = InlineKeyboardButton(
        text=t("generation.button.create_avatar"), callback_data=AVATARS_NEW_CALLBACK
    )
    without = InlineKeyboardButton(
        text=t("generation.button.without_avatar"),
        callback_data=GenOption(draft=draft_id, field="na").pack(),
    )
    return InlineKeyboardMarkup(inline_keyboard=[[create], [without]])


def delete_keyboard(t: Texts, generation_id: uuid.UUID) -> InlineKeyboardMarkup:
    yes = InlineKeyboardButton(
        text=t("generation.button.delete_yes"), callback_data=action_callback("delyes", generation_id)
    )
    keep = InlineKeyboardButton(
        text=t("generation.button.keep"), callback_data=action_callback("keep", generation_id)
    )
    return InlineKeyboardMarkup(inline_keyboard=[[yes, keep]])


# --- the gallery -----------------------------------------------------------------------------


def gallery_caption(t: Texts, card: GalleryCard) -> str:
    return t(
        "generation.gallery.card",
        position=card.offset + 1,
        total=card.total,
        date=card.created_at.strftime(t("billing.date_format")),
        prompt=excerpt(card.prompt, 600),
        images=t("generation.gallery.images", count=card.images),
        cost=card.cost,
    )


def gallery_keyboard(t: Texts, card: GalleryCard) -> InlineKeyboardMarkup:
    def button(key: str, data: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(text=t(key), callback_data=data)

    navigation = []
    if card.offset > 0:
        navigation.append(button("generation.button.newer", GalleryPage(offset=card.offset - 1).pack()))
    if card.offset + 1 < card.total:
        navigation.append(button("generation.button.older", GalleryPage(offset=card.offset + 1).pack()))
    rows = [navigation] if navigation else []
    rows.append(
        [
            button("generation.button.file", action_callback("file", card.id)),
            button("generation.button.regenerate", action_callback("regen", card.id)),
        ]
    )
    rows.append([button("generation.button.delete", action_callback("del", card.id))])
    return InlineKeyboardMarkup(inline_keyboard=rows)


# --- what the job tells the user -------------------------------------------------------------


class GenerationPresenter:
    """Messages of the job, in the user's language. A failed message never undoes the outcome."""

    def __init__(self, *, messenger: Messenger, translator: Translator, storage: ObjectStorage) -> None:
        self._messenger = messenger
        self._translator = translator
        self._storage = storage

    async def _safely(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception:
            log.warning("generation.notify_failed", what=what, exc_info=True)
            return None

    async def action(self, user_id: int) -> None:
        await self._safely("action", self._messenger.send_chat_action(user_id, "upload_photo"))

    async def status(self, user_id: int, config: dict[str, Any], text: str) -> None:
        """Edit the one status message (the confirmed options); send one if there is none."""
        message_id = config.get("status_message_id")
        if isinstance(message_id, int):
            await self._safely("status", self._messenger.edit_text(user_id, message_id, text))
        else:
            await self._safely("status", self._messenger.send_text(user_id, text))

    async def working(self, *, user_id: int, locale: str, config: dict[str, Any], step: str) -> None:
        t = self._translator.bind(locale)
        n = int(config.get("num_images", 1))
        await self.status(user_id, config, t(f"generation.status.{step}", count=n))

    async def delivered(
        self,
        *,
        generation_id: uuid.UUID,
        finished: Finished,
        results: list[dict[str, Any]],
        blocked: int,
        failed: int,
    ) -> int | None:
        t = self._translator.bind(finished.locale)
        user_id = finished.user_id
        lines = [t("generation.done", delivered=len(results), cost=finished.captured, count=len(results))]
        if blocked:
            lines.append(t("generation.blocked", blocked=blocked, count=blocked))
        if failed:
            lines.append(t("generation.lost", failed=failed, count=failed))
        if finished.returned:
            lines.append(t("generation.returned", returned=finished.returned, count=finished.returned))
        await self.status(user_id, finished.config, "\n".join(lines))
        await self.action(user_id)
        photos: list[bytes] = []
        for item in results:
            try:
                photos.append(await self._storage.get(str(item["key"])))
            except StorageError:
                log.error("generation.stored_image_missing", generation_id=str(generation_id))
        if not photos:
            return None
        caption = t("generation.caption", prompt=excerpt(finished.prompt, CAPTION_PROMPT_CHARS))
        buttons = result_buttons(t, generation_id, len(photos))
        if len(photos) == 1:
            sent = self._messenger.send_photo(user_id, photos[0], caption=caption, buttons=buttons)
            return cast("int | None", await self._safely("photo", sent))
        await self._safely("album", self._messenger.send_album(user_id, photos, caption=caption))
        sent = self._messenger.send_text(user_id, t("generation.actions"), buttons=buttons)
        return cast("int | None", await self._safely("actions", sent))

    async def remove_buttons(self, user_id: int, message_id: int) -> None:
        await self._safely("older_actions", self._messenger.remove_buttons(user_id, message_id))

    async def failed(self, *, finished: Finished, reason: str) -> None:
        t = self._translator.bind(finished.locale)
        text = t("generation.failed", reason=t(f"generation.failure.{reason}"))
        if finished.returned:
            text += "\n" + t("generation.returned", returned=finished.returned, count=finished.returned)
        await self.status(finished.user_id, finished.config, text)

    async def defect(self, *, user_id: int, locale: str, generation_id: uuid.UUID, free: bool) -> None:
        t = self._translator.bind(locale)
        buttons = None
        if free:
            buttons = [[Button(t("generation.button.free"), action_callback("free", generation_id))]]
        key = "generation.defect.free" if free else "generation.defect"
        await self._safely("defect", self._messenger.send_text(user_id, t(key), buttons=buttons))
