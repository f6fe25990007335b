"""Voice, audio, video and documents with sound → text; /transcripts; /transcribe in groups."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiogram import F, Router, html
from aiogram.filters import Command, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.bot import resume
from aisha.bot.keyboards import menu_button
from aisha.bot.paywall import show_packages
from aisha.bot.resume import IntentKind, Resume
from aisha.db.base import parse_uuid
from aisha.db.session import after_commit
from aisha.i18n import Texts
from aisha.messaging import FileTooLarge, NotEnoughRoom
from aisha.transcription.merge import split_message, utf16_len
from aisha.transcription.models import Transcript
from aisha.transcription.service import (
    JOB_NAME,
    MESSAGE_LIMIT,
    TOPUP_CALLBACK,
    IncomingMedia,
    TooManyTranscriptions,
    format_duration,
    too_large_text,
)
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

PAGE_SIZE = 5
PREVIEW_WORDS = 8
PREVIEW_UNITS = 120  # the most a preview takes, in UTF-16 units


class TranscriptAction(CallbackData, prefix="tr"):
    action: str  # view, file (.txt), srt, delete (asks), delete_yes, keep, page
    id: str = ""
    offset: int = 0  # the list page to come back to


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


def _preview(transcript: Transcript) -> str:
    words = (transcript.text or "").split()
    text = " ".join(words[:PREVIEW_WORDS]) + (" …" if len(words) > PREVIEW_WORDS else "")
    # Speech written without spaces (Chinese, Japanese) is one long "word": cap it too, or five of
    # them make a list longer than the 4096 UTF-16 units Telegram takes in a message.
    if utf16_len(text) > PREVIEW_UNITS:
        text = split_message(text, PREVIEW_UNITS - 2)[0] + " …"
    return html.quote(text)


def confirm_keyboard(t: Texts, transcript_id: str, offset: int) -> InlineKeyboardMarkup:
    def button(key: str, action: str) -> InlineKeyboardButton:
        data = TranscriptAction(action=action, id=transcript_id, offset=offset).pack()
        return InlineKeyboardButton(text=t(key), callback_data=data)

    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                button("transcription.button.delete_yes", "delete_yes"),
                button("transcription.button.keep", "keep"),
            ]
        ]
    )


def create_router(services: Services) -> Router:
    router = Router(name="transcription")
    transcription = services.transcription

    async def start(message: Message, media: IncomingMedia, session: AsyncSession, t: Texts) -> bool:
        """Accept the recording and enqueue its job; False (the user told why) when refused."""
        if not transcription.available:
            await message.reply(t("transcription.error.not_configured"))
            return False
        if not await services.locks.hold_for(session, user_id=media.user_id):
            await message.reply(t("limits.busy"))
            return False
        try:
            transcript_id = await transcription.accept(session, media=media)
        except FileTooLarge as error:
            await message.reply(too_large_text(t, error))
            return False
        except NotEnoughRoom:
            await message.reply(t("transcription.error.no_room"))
            return False
        except TooManyTranscriptions as error:
            await message.reply(t("transcription.too_many", running=error.running, limit=error.limit))
            return False
        # Enqueued once this update's transaction commits, so the job finds the row.
        after_commit(session, lambda: services.queue.enqueue(JOB_NAME, transcript_id=str(transcript_id)))
        return True

    @router.callback_query(F.data.startswith(TOPUP_CALLBACK))
    async def top_up_first(
        query: CallbackQuery, session: AsyncSession, user: User, t: Texts, state: FSMContext
    ) -> None:
        """The top-up under a refusal for credits: remember the recording, open the top-up."""
        transcript_id = parse_uuid(str(query.data).removeprefix(TOPUP_CALLBACK))
        refused = await transcription.refused_for_credits(
            session, user_id=user.telegram_id, transcript_id=transcript_id
        )
        if refused is None or transcript_id is None or not isinstance(query.message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)  # tampered or another's
            return
        data = {"transcript_id": transcript_id.hex}
        await resume.remember(state, kind=IntentKind.TRANSCRIPTION, data=data, now=services.clock.now())
        await query.answer()
        await show_packages(query.message, t, services.payments.packages)

    @router.callback_query(Resume.filter(F.kind == IntentKind.TRANSCRIPTION))
    async def resume_transcription(
        query: CallbackQuery,
        callback_data: Resume,
        session: AsyncSession,
        user: User,
        t: Texts,
        state: FSMContext,
    ) -> None:
        """ "Continue" after a top-up: the same recording, accepted as if sent again."""
        found, intent = await resume.lookup(state, callback_data, now=services.clock.now())
        transcript_id = parse_uuid(str(intent.data.get("transcript_id", ""))) if intent else None
        refused = await transcription.refused_for_credits(
            session, user_id=user.telegram_id, transcript_id=transcript_id
        )
        if refused is None or not isinstance(query.message, Message):
            await query.answer(t(resume.answer_for(found)), show_alert=True)
            return
        await query.answer()
        if await start(query.message, refused.media, session, t):
            await resume.forget(state)

    media_filter = F.voice | F.audio | F.video | F.video_note | F.document

    @router.message(F.chat.type == "private", StateFilter(None), media_filter)
    async def recording(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        media = media_of(message, user_id=user.telegram_id)
        if media is None:
            await message.reply(t("transcription.error.unsupported"))
            return
        await start(message, media, session, t)

    @router.message(Command("transcribe"))
    async def transcribe_reply(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        target = message.reply_to_message
        media = media_of(target, user_id=user.telegram_id) if target else None
        if media is None:
            await message.reply(t("transcription.reply_hint"))
            return
        # Answer where the command was given, to the message it points at.
        await start(message, media, session, t)

    async def show_page(
        message: Message, user: User, session: AsyncSession, t: Texts, offset: int, *, edit: bool
    ) -> None:
        items, total = await transcription.list_for(
            session, user_id=user.telegram_id, limit=PAGE_SIZE, offset=offset
        )
        if not items and total:  # the last one on its page was deleted: the page before
            offset = (total - 1) // PAGE_SIZE * PAGE_SIZE
            items, total = await transcription.list_for(
                session, user_id=user.telegram_id, limit=PAGE_SIZE, offset=offset
            )
        if not items:
            text = t("transcription.list.empty")
            keyboard = None
        else:
            date_format = t("billing.date_format")
            lines = [t("transcription.list.title", first=offset + 1, last=offset + len(items), total=total)]
            rows = []
            for number, item in enumerate(items, start=offset + 1):
                lines.append(
                    t(
                        "transcription.list.item",
                        number=number,
                        when=item.created_at.strftime(date_format),
                        duration=format_duration(item.duration_ms / 1000),
                        preview=_preview(item),
                    )
                )
                row = [
                    InlineKeyboardButton(
                        text=t("transcription.button.view", number=number),
                        callback_data=TranscriptAction(action="view", id=item.id.hex).pack(),
                    ),
                    InlineKeyboardButton(
                        text=t("transcription.button.file"),
                        callback_data=TranscriptAction(action="file", id=item.id.hex).pack(),
                    ),
                ]
                if item.srt_key:
                    row.append(
                        InlineKeyboardButton(
                            text=t("transcription.button.srt"),
                            callback_data=TranscriptAction(action="srt", id=item.id.hex).pack(),
                        )
                    )
                row.append(
                    InlineKeyboardButton(
                        text=t("transcription.button.delete"),
                        callback_data=TranscriptAction(action="delete", id=item.id.hex, offset=offset).pack(),
                    )
                )
                rows.append(row)
            navigation = []
            if offset > 0:
                navigation.append(
                    InlineKeyboardButton(
                        text=t("billing.newer"),
                        callback_data=TranscriptAction(
                            action="page", offset=max(offset - PAGE_SIZE, 0)
                        ).pack(),
                    )
                )
            if offset + len(items) < total:
                navigation.append(
                    InlineKeyboardButton(
                        text=t("billing.older"),
                        callback_data=TranscriptAction(action="page", offset=offset + PAGE_SIZE).pack(),
                    )
                )
            if navigation:
                rows.append(navigation)
            text = "\n".join(lines)
            keyboard = InlineKeyboardMarkup(inline_keyboard=rows)
        if edit:
            await message.edit_text(text, reply_markup=keyboard)
        else:
            await message.answer(text, reply_markup=keyboard)

    @router.message(Command("transcripts"))
    @router.message(menu_button(services.translator, "menu.transcripts"))
    async def list_transcripts(message: Message, user: User, session: AsyncSession, t: Texts) -> None:
        await show_page(message, user, session, t, 0, edit=False)

    @router.callback_query(TranscriptAction.filter())
    async def act(
        query: CallbackQuery, callback_data: TranscriptAction, user: User, session: AsyncSession, t: Texts
    ) -> None:
        message = query.message if isinstance(query.message, Message) else None
        if callback_data.action == "page" and message is not None and callback_data.offset >= 0:
            await show_page(message, user, session, t, callback_data.offset, edit=True)
            await query.answer()
            return
        transcript_id = parse_uuid(callback_data.id)
        transcript = (
            await transcription.get_owned(session, user_id=user.telegram_id, transcript_id=transcript_id)
            if transcript_id and message is not None
            else None
        )
        if transcript is None or message is None:
            # Someone else's transcript, a deleted one, or forged data: show nothing of it.
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        if callback_data.action == "view":
            await query.answer()
            text = (transcript.text or "").strip()
            for part in split_message(text, MESSAGE_LIMIT) if text else [t("transcription.empty")]:
                await message.answer(html.quote(part))
        elif callback_data.action in ("file", "srt"):
            # Each button sends the one file it names.
            key, name = (
                (transcript.text_key, "transcript.txt")
                if callback_data.action == "file"
                else (transcript.srt_key, "transcript.srt")
            )
            if key is None:
                await query.answer(t("errors.bad_button"), show_alert=True)
                return
            await query.answer()
            data = await transcription.read_file(key)
            await message.answer_document(BufferedInputFile(data, filename=name))
        elif callback_data.action == "delete":
            # Asked first, as the gallery does; the list message turns into the question.
            await query.answer()
            await message.edit_text(
                t(
                    "transcription.delete_confirm",
                    when=transcript.created_at.strftime(t("billing.date_format")),
                    duration=format_duration(transcript.duration_ms / 1000),
                    preview=_preview(transcript),
                ),
                reply_markup=confirm_keyboard(t, transcript.id.hex, callback_data.offset),
            )
        elif callback_data.action == "delete_yes":
            await transcription.delete(session, user_id=user.telegram_id, transcript_id=transcript.id)
            await query.answer(t("transcription.deleted"))
            await show_page(message, user, session, t, callback_data.offset, edit=True)
        elif callback_data.action == "keep":
            await query.answer(t("transcription.kept"))
            await show_page(message, user, session, t, callback_data.offset, edit=True)
        else:
            await query.answer(t("errors.bad_button"), show_alert=True)

    return router
