"""Image generation in the bot: a prompt (any text outside a wizard, /generate) or a photo (/like)
→ options with the price → confirm → the `generation.run` job (`cards`); the buttons under results
and /gallery (`results`). Thin: rules live in GenerationService, texts and keyboards in
`bot.presenters.generation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command, StateFilter

from aisha.bot.keyboards import MAIN_MENU, menu_button
from aisha.bot.presenters.generation import NEW_CALLBACK, GalleryPage, GenAction, GenOption
from aisha.bot.resume import IntentKind, Resume
from aisha.bot.routers.generation.cards import (
    ask_prompt,
    generate_command,
    generate_new,
    generate_with_avatar,
    like_command,
    option,
    photo_reference,
    prompt_text,
    resume_generation,
)
from aisha.bot.routers.generation.results import act, gallery, gallery_page

if TYPE_CHECKING:
    from aisha.container import Services

__all__ = ["create_router"]


def create_router(services: Services) -> Router:
    """The handlers above, in the order their filters must be tried. `services` only decides which
    filters apply (what the menu says, what can be served); handlers get it from the dispatcher."""
    router = Router(name="generation")
    service = services.generation
    translator = services.translator
    menu_texts = {
        translator.get(locale, key) for locale in translator.locales for row in MAIN_MENU for key in row
    }
    router.callback_query.register(option, GenOption.filter())
    router.callback_query.register(resume_generation, Resume.filter(F.kind == IntentKind.GENERATION))
    router.message.register(generate_command, Command("generate"))
    router.message.register(ask_prompt, menu_button(translator, "menu.generate"))
    router.callback_query.register(generate_new, F.data == NEW_CALLBACK)
    router.callback_query.register(generate_with_avatar, F.data.startswith(NEW_CALLBACK + ":"))
    router.message.register(like_command, Command("like"))
    # A bare photo (or free text below) is taken only when it can be served; otherwise it falls
    # through to the fallback, as before this feature.
    can_like = service.available and service.vision_available
    router.message.register(
        photo_reference, StateFilter(None), F.photo, F.chat.type == "private", F.func(lambda _: can_like)
    )
    router.callback_query.register(act, GenAction.filter())
    router.message.register(gallery, Command("gallery"))
    router.message.register(gallery, menu_button(translator, "menu.gallery"))
    router.callback_query.register(gallery_page, GalleryPage.filter())
    # Any text outside a wizard: a prompt (below every other feature, above the fallback).
    router.message.register(
        prompt_text,
        StateFilter(None),
        F.chat.type == "private",
        F.text,
        ~F.text.startswith("/"),
        ~F.text.in_(menu_texts),
        F.func(lambda _: service.available),
    )
    return router
