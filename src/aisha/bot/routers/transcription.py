"""Voice, audio, video and documents with sound → text; /transcripts; /transcribe in groups.

Each handler turns an update into one call of `TranscriptionService` and shows the answer through
`aisha.bot.presenters.transcription`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import BufferedInputFile, CallbackQuery, Message
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot import resume
from aisha.bot.keyboards import menu_button
from aisha.bot.paywall import show_packages
from aisha.bot.presenters.transcription import (
    PAGE_SIZE,
    TOPUP_CALLBACK,
    TranscriptAction,
    confirm_keyboard,
    delete_question,
    list_page,
    too_large_text,
    too_many_text,
    view_parts,
)
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.i18n import Texts
from aisha.messaging import FileTooLarge, NotEnoughRoom
from aisha.operations import Busy
from aisha.transcription.errors import TooManyTranscriptions, TranscriptionUnavailable
from aisha.transcription.models import IncomingMedia, Transcript
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

MEDIA = F.voice | F.audio | F.video | F.video_note | F.document


def media_of(message: Message, *, user_id: int) -> IncomingMedia | None:
    """The recording in a message, or None when there is none we can transcribe."""

    def media(kind: str, file_id: str, file_size: int | None, file_name: str | None = None) -> IncomingMedia:
        return IncomingMedia(
            user_id=user_id,
            chat_id=message.chat.id,
            message_id=message.message_id,
            file_id=file_id,
            kind=kind,
            file_name=file_name,
            file_size=file_size,
        )

    if message.voice:
        return media("voice", message.voice.file_id, message.voice.file_size)
    if message.audio:
        return media("audio", message.audio.file_id, message.audio.file_size, message.audio.file_name)
    if message.video:
        return media("video", message.video.file_id, message.video.file_size, message.video.file_name)
    if message.video_note:
        return media("video_note", message.video_note.file_id, message.video_note.file_size)
    document = message.document
    if document and (document.mime_type or "").startswith(("audio/", "video/")):
        return media("document", document.file_id, document.file_size, document.file_name)
    return None


async def _start(
    message: Message, media: IncomingMedia, services: Services, session: AsyncSession, t: Texts
) -> bool:
    """Accept the recording (its job runs once this update commits); False, the user told why,
    when refused."""
    try:
        await services.transcription.start(session, media=media)
    except TranscriptionUnavailable:
        await message.reply(t("transcription.error.not_configured"))
    except Busy:
        await message.reply(t("limits.busy"))
    except FileTooLarge as error:
        await message.reply(too_large_text(t, error))
    except NotEnoughRoom:
        await message.reply(t("transcription.error.no_room"))
    except TooManyTranscriptions as error:
        await message.reply(too_many_text(t, error))
    else:
        return True
    return False


async def recording(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts
) -> None:
    media = media_of(message, user_id=user.telegram_id)
    if media is None:
        await message.reply(t("transcription.error.unsupported"))
        return
    await _start(message, media, services, session, t)


async def transcribe_reply(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts
) -> None:
    target = message.reply_to_message
    media = media_of(target, user_id=user.telegram_id) if target else None
    if media is None:
        await message.reply(t("transcription.reply_hint"))
        return
    # Answer where the command was given, to the message it points at.
    await _start(message, media, services, session, t)


async def top_up_first(
    query: CallbackQuery, services: Services, session: AsyncSession, user: User, t: Texts, state: FSMContext
) -> None:
    """The top-up under a refusal for credits: remember the recording, open the top-up."""
    transcript_id = parse_uuid(str(query.data).removeprefix(TOPUP_CALLBACK))
    refused = await services.transcription.refused_for_credits(
        session, user_id=user.telegram_id, transcript_id=transcript_id
    )
    if refused is None or transcript_id is None or not isinstance(query.message, Message):
        await query.answer(t("errors.bad_button"), show_alert=True)  # tampered or another's
        return
    data = {"transcript_id": transcript_id.hex}
    await resume.remember(state, kind=IntentKind.TRANSCRIPTION, data=data, now=services.clock.now())
    await query.answer()
    await show_packages(query.message, t, services.payments.packages)


async def resume_transcription(
    query: CallbackQuery,
    callback_data: Resume,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    state: FSMContext,
) -> None:
    """ "Continue" after a top-up: the same recording, accepted as if sent again."""
    found, intent = await resume.lookup(state, callback_data, now=services.clock.now())
    transcript_id = parse_uuid(str(intent.data.get("transcript_id", ""))) if intent else None
    refused = await services.transcription.refused_for_credits(
        session, user_id=user.telegram_id, transcript_id=transcript_id
    )
    if refused is None or not isinstance(query.message, Message):
        await query.answer(t(resume.answer_for(found)), show_alert=True)
        return
    await query.answer()
    if await _start(query.message, refused.media, services, session, t):
        await resume.forget(state)


async def _show_page(
    message: Message,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
    offset: int,
    *,
    edit: bool,
) -> None:
    items, total, offset = await services.transcription.page(
        session, user_id=user.telegram_id, limit=PAGE_SIZE, offset=offset
    )
    text, keyboard = list_page(t, items, total, offset)
    if edit:
        await message.edit_text(text, reply_markup=keyboard)
    else:
        await message.answer(text, reply_markup=keyboard)


async def list_transcripts(
    message: Message, services: Services, session: AsyncSession, user: User, t: Texts
) -> None:
    await _show_page(message, services, session, user, t, 0, edit=False)


async def turn_page(
    query: CallbackQuery,
    callback_data: TranscriptAction,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
) -> None:
    """Newer or older transcripts, in the same message."""
    if not isinstance(query.message, Message) or callback_data.offset < 0:
        await query.answer(t("errors.bad_button"), show_alert=True)  # forged data
        return
    await _show_page(query.message, services, session, user, t, callback_data.offset, edit=True)
    await query.answer()


async def act(
    query: CallbackQuery,
    callback_data: TranscriptAction,
    services: Services,
    session: AsyncSession,
    user: User,
    t: Texts,
) -> None:
    """The buttons under one transcript of /transcripts: its view, its files, and deletion."""
    message = query.message if isinstance(query.message, Message) else None
    transcript = (
        await services.transcription.get_owned(
            session, user_id=user.telegram_id, transcript_id=parse_uuid(callback_data.id)
        )
        if message is not None
        else None
    )
    if transcript is None or message is None:
        # Someone else's transcript, a deleted one, or forged data: show nothing of it.
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    if callback_data.action in ("view", "file", "srt"):
        await _send(query, message, services, transcript, callback_data.action, t)
    elif callback_data.action == "delete":
        # Asked first, as the gallery does; the list message turns into the question.
        await query.answer()
        keyboard = confirm_keyboard(t, transcript.id.hex, callback_data.offset)
        await message.edit_text(delete_question(t, transcript), reply_markup=keyboard)
    elif callback_data.action in ("delete_yes", "keep"):
        if callback_data.action == "delete_yes":
            await services.transcription.delete(
                session, user_id=user.telegram_id, transcript_id=transcript.id
            )
        await query.answer(
            t("transcription.deleted" if callback_data.action == "delete_yes" else "transcription.kept")
        )
        await _show_page(message, services, session, user, t, callback_data.offset, edit=True)
    else:
        await query.answer(t("errors.bad_button"), show_alert=True)


async def _send(
    query: CallbackQuery, message: Message, services: Services, transcript: Transcript, action: str, t: Texts
) -> None:
    """The text again (view), or the one file the button names (.txt, .srt)."""
    if action == "view":
        await query.answer()
        for part in view_parts(t, transcript):
            await message.answer(part)
        return
    key, name = (
        (transcript.text_key, "transcript.txt")
        if action == "file"
        else (transcript.srt_key, "transcript.srt")
    )
    if key is None:
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    await query.answer()
    data = await services.transcription.read_file(key)
    await message.answer_document(BufferedInputFile(data, filename=name))


def create_router(services: Services) -> Router:
    """A fresh router (a dispatcher per app, tests build several) of the handlers above; the
    menu button's filter knows its text in every language."""
    router = Router(name="transcription")
    router.callback_query.register(top_up_first, F.data.startswith(TOPUP_CALLBACK))
    router.callback_query.register(resume_transcription, Resume.filter(F.kind == IntentKind.TRANSCRIPTION))
    router.message.register(recording, F.chat.type == "private", StateFilter(None), MEDIA)
    router.message.register(transcribe_reply, Command("transcribe"))
    router.message.register(list_transcripts, menu_button(services.translator, "menu.transcripts"))
    router.message.register(list_transcripts, Command("transcripts"))
    router.callback_query.register(turn_page, TranscriptAction.filter(F.action == "page"))
    router.callback_query.register(act, TranscriptAction.filter())
    return router
