"""How services talk to users and fetch their files without knowing about aiogram.

The bot adapter (`bot/messenger.py`) implements this over the Bot API; tests use the real one
against the fake Bot API server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

EventsT = TypeVar("EventsT")


@dataclass(frozen=True)
class Button:
    text: str
    callback_data: str


Buttons = list[list[Button]]
PUBLIC_API_DOWNLOAD_LIMIT = 20 * 1024 * 1024  # what the public Bot API lets a bot download


class FileTooLarge(Exception):
    """The file is over what the bot may download: Telegram's 20 MB for bots on the public Bot API
    (`public_api`), else the operator's cap for a local Bot API server. `size` 0: not known."""

    def __init__(self, size: int, limit: int, *, public_api: bool) -> None:
        self.size = size
        self.limit = limit
        self.public_api = public_api
        super().__init__(f"file of {size} bytes is over the {limit}-byte download limit")


class NotEnoughRoom(Exception):
    """The disk can't take the file now (a local Bot API server's large files): nothing was
    started; the operator has to free space, the user may try again later."""

    def __init__(self, *, size: int, free: int, needed: int) -> None:
        self.size = size
        self.free = free
        self.needed = needed
        super().__init__(f"a file of {size} bytes needs {needed} bytes free on disk, {free} are")


class RecipientUnreachable(Exception):
    """The chat can't receive messages: the user blocked the bot, or the chat is gone. Trying
    again won't help (unlike a timeout or a server error)."""


class Messenger(Protocol):
    async def send_text(
        self, chat_id: int, text: str, *, buttons: Buttons | None = None, reply_to: int | None = None
    ) -> int:
        """Sends a message; returns its message id. Raises RecipientUnreachable."""
        ...

    async def edit_text(
        self, chat_id: int, message_id: int, text: str, *, buttons: Buttons | None = None
    ) -> None:
        """Edits a message; an unchanged text is not an error."""
        ...

    async def remove_buttons(self, chat_id: int, message_id: int) -> None:
        """Takes the inline buttons off a message (its step is over)."""
        ...

    async def send_document(
        self, chat_id: int, *, file_name: str, data: bytes, caption: str | None = None
    ) -> None: ...

    async def send_chat_action(self, chat_id: int, action: str) -> None: ...

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, buttons: Buttons | None = None
    ) -> int:
        """Sends one image; returns its message id."""
        ...

    async def send_album(self, chat_id: int, photos: list[bytes], *, caption: str | None = None) -> list[int]:
        """Sends 2–10 images as one album (the caption goes under the first); returns their ids."""
        ...

    async def check_download(self, size: int | None) -> None:
        """Raises FileTooLarge or NotEnoughRoom for a file of `size` bytes (as the message said)
        that can't be downloaded now; checked before anything is started for it."""
        ...

    async def download(self, file_id: str, destination: Path, *, max_bytes: int | None = None) -> int:
        """Saves a Telegram file to `destination`; returns its size. Raises FileTooLarge (also over
        the caller's own `max_bytes`, checked before anything is copied), NotEnoughRoom."""
        ...


class Tells(Generic[EventsT]):
    """A feature's object that tells users what happened through the bot's presenter (its events
    port). The presenter is an adapter, so the wiring can't build it: the adapters attach it with
    `tell_through` when they register the feature's jobs (`aisha/jobs/<feature>.py`)."""

    _told: EventsT | None = None

    def tell_through(self, events: EventsT) -> None:
        self._told = events

    @property
    def _events(self) -> EventsT:
        if self._told is None:
            raise RuntimeError(f"{type(self).__name__}.tell_through was not called")
        return self._told
