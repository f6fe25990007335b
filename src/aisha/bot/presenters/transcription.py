"""What the user sees of transcription: the status message of a job, the delivered text, the
list of transcripts with its buttons, and the words for every refusal. Implements
`aisha.transcription.ports.TranscriptionEvents` over a `Messenger`."""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence

from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from aisha.billing.prices import billable_minutes
from aisha.i18n import Texts, Translator
from aisha.messaging import Button, FileTooLarge, Messenger
from aisha.transcription.errors import TooManyTranscriptions
from aisha.transcription.merge import split_message, utf16_len
from aisha.transcription.models import Transcript
from aisha.transcription.ports import (
    CantHold,
    CantPayLength,
    Conversation,
    Done,
    Downloading,
    Failed,
    Status,
    TooLarge,
    TooLong,
    Working,
)

MESSAGE_LIMIT = 3500  # the margin keeps an HTML-escaped part within Telegram's 4096
PAGE_SIZE = 5
PREVIEW_WORDS = 8
PREVIEW_UNITS = 120  # the most a preview takes, in UTF-16 units
# The top-up button under a refusal for credits carries the transcript, so the top-up can resume it.
TOPUP_CALLBACK = "trtop:"


class TranscriptAction(CallbackData, prefix="tr"):
    action: str  # view, file (.txt), srt, delete (asks), delete_yes, keep, page
    id: str = ""
    offset: int = 0  # the list page to come back to


def topup_callback(transcript_id: uuid.UUID) -> str:
    return TOPUP_CALLBACK + transcript_id.hex


def format_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def too_large_text(t: Texts, error: FileTooLarge | TooLarge) -> str:
    """Telegram's 20 MB for bots on the public Bot API, or the operator's cap on a local one."""
    key = "transcription.error.too_large" if error.public_api else "transcription.error.too_large_local"
    return t(key, limit_mb=error.limit // 2**20)


def too_many_text(t: Texts, error: TooManyTranscriptions) -> str:
    return t("transcription.too_many", running=error.running, limit=error.limit)


def text_parts(t: Texts, text: str) -> list[str]:
    """A delivered text in messages Telegram takes (HTML); a note when nothing was heard."""
    parts = split_message(text, MESSAGE_LIMIT) if text.strip() else [t("transcription.empty")]
    return [html.escape(part, quote=False) for part in parts]


def view_parts(t: Texts, transcript: Transcript) -> list[str]:
    """A kept transcript's text, shown again from /transcripts."""
    text = (transcript.text or "").strip()
    parts = split_message(text, MESSAGE_LIMIT) if text else [t("transcription.empty")]
    return [html.escape(part, quote=False) for part in parts]


def status_text(t: Texts, status: Status) -> str:
    """The words of a job's status message."""
    match status:
        case Downloading():
            return t("transcription.status.downloading")
        case Working():
            header = t(
                "transcription.status.header",
                duration=format_duration(status.duration),
                price=status.price,
                balance=status.balance,
                count=status.price,
            )
            if status.total is None:
                return header + "\n" + t("transcription.status.working")
            return header + "\n" + t("transcription.status.chunks", done=status.done, total=status.total)
        case Done():
            return t("transcription.status.done", duration=format_duration(status.duration))
        case TooLarge():
            return too_large_text(t, status)
        case TooLong():
            key = "transcription.error.too_long_real" if status.exact else "transcription.error.too_long_over"
            return t(key, duration=format_duration(status.duration), limit=format_duration(status.limit))
        case CantHold():
            return t(
                "billing.insufficient",
                required=status.required,
                balance=status.balance,
                shortfall=status.shortfall,
                count=status.shortfall,
            )
        case CantPayLength():
            return t(
                "transcription.error.not_enough_for",
                duration=format_duration(status.duration),
                minutes=billable_minutes(status.duration),
                price=status.required,
                balance=status.balance,
                count=status.required,
            )
        case Failed(reason=reason):
            internal = reason in ("ffmpeg_failed", "gave_up")  # our fault, not the file's
            return t("transcription.error.internal" if internal else f"transcription.error.{reason}")


class TranscriptionPresenter:
    """The job's messages, in the user's language."""

    def __init__(self, *, messenger: Messenger, translator: Translator) -> None:
        self._messenger = messenger
        self._translator = translator

    def _texts(self, to: Conversation) -> Texts:
        return self._translator.bind(to.locale or self._translator.default_locale)

    async def show(self, to: Conversation, status: Status) -> int | None:
        t = self._texts(to)
        text = status_text(t, status)
        buttons = None
        if isinstance(status, (CantHold, CantPayLength)):
            buttons = [[Button(t("billing.topup_button"), topup_callback(status.transcript_id))]]
        if to.status_message_id is None:
            return await self._messenger.send_text(to.chat_id, text, buttons=buttons, reply_to=to.reply_to)
        await self._messenger.edit_text(to.chat_id, to.status_message_id, text, buttons=buttons)
        return None

    async def deliver(self, to: Conversation, text: str) -> None:
        for part in text_parts(self._texts(to), text):
            await self._messenger.send_text(to.chat_id, part, reply_to=to.reply_to)

    async def send_file(self, to: Conversation, *, name: str, data: bytes) -> None:
        await self._messenger.send_document(to.chat_id, file_name=name, data=data)

    async def typing(self, to: Conversation) -> None:
        await self._messenger.send_chat_action(to.chat_id, "typing")


# ------------------------------------------------------------------------------ /transcripts


def preview(transcript: Transcript) -> str:
    words = (transcript.text or "").split()
    text = " ".join(words[:PREVIEW_WORDS]) + (" …" if len(words) > PREVIEW_WORDS else "")
    # Speech written without spaces (Chinese, Japanese) is one long "word": cap it too, or five of
    # them make a list longer than the 4096 UTF-16 units Telegram takes in a message.
    if utf16_len(text) > PREVIEW_UNITS:
        text = split_message(text, PREVIEW_UNITS - 2)[0] + " …"
    return html.escape(text, quote=False)


def _button(text: str, action: str, transcript_id: str = "", offset: int = 0) -> InlineKeyboardButton:
    data = TranscriptAction(action=action, id=transcript_id, offset=offset).pack()
    return InlineKeyboardButton(text=text, callback_data=data)


def confirm_keyboard(t: Texts, transcript_id: str, offset: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                _button(t("transcription.button.delete_yes"), "delete_yes", transcript_id, offset),
                _button(t("transcription.button.keep"), "keep", transcript_id, offset),
            ]
        ]
    )


def delete_question(t: Texts, transcript: Transcript) -> str:
    return t(
        "transcription.delete_confirm",
        when=transcript.created_at.strftime(t("billing.date_format")),
        duration=format_duration(transcript.duration_ms / 1000),
        preview=preview(transcript),
    )


def list_page(
    t: Texts, items: Sequence[Transcript], total: int, offset: int
) -> tuple[str, InlineKeyboardMarkup | None]:
    """A page of /transcripts: a line and a row of buttons per transcript, then newer/older."""
    if not items:
        return t("transcription.list.empty"), None
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
                preview=preview(item),
            )
        )
        row = [
            _button(t("transcription.button.view", number=number), "view", item.id.hex),
            _button(t("transcription.button.file"), "file", item.id.hex),
        ]
        if item.srt_key:
            row.append(_button(t("transcription.button.srt"), "srt", item.id.hex))
        row.append(_button(t("transcription.button.delete"), "delete", item.id.hex, offset))
        rows.append(row)
    navigation = []
    if offset > 0:
        navigation.append(_button(t("billing.newer"), "page", offset=max(offset - PAGE_SIZE, 0)))
    if offset + len(items) < total:
        navigation.append(_button(t("billing.older"), "page", offset=offset + PAGE_SIZE))
    if navigation:
        rows.append(navigation)
    return "\n".join(lines), InlineKeyboardMarkup(inline_keyboard=rows)
