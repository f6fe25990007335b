"""Users: registration on first contact, last-seen tracking, preferences."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.upsert import insert_ignore
from aisha.users.errors import UnknownLanguage
from aisha.users.models import User

# last_seen_at is read by the day ("active today", "this week") and shown as a date: written at
# most this often per user, so most updates write nothing to the user row.
LAST_SEEN_RESOLUTION = timedelta(minutes=5)
# What recordings can be transcribed in; "auto" detects the language of each.
TRANSCRIPTION_LANGUAGES = ("auto", "ru", "en")
# Built once: it runs on every update.
_USER_BY_ID = (
    select(User).where(User.telegram_id == bindparam("telegram_id")).execution_options(populate_existing=True)
)


@dataclass(frozen=True)
class TelegramProfile:
    """What Telegram tells us about a user on every update."""

    telegram_id: int
    username: str | None
    first_name: str | None
    last_name: str | None
    language_code: str | None


async def user_locale(session: AsyncSession, user_id: int, *, default: str = "en") -> str:
    """The user's interface language, for messages sent outside an update (jobs, webhooks)."""
    return await session.scalar(select(User.language).where(User.telegram_id == user_id)) or default


class UserService:
    def __init__(self, *, clock: Clock, ledger: LedgerService, welcome_bonus: int = 0) -> None:
        self._clock = clock
        self._ledger = ledger
        self._welcome_bonus = welcome_bonus

    async def register_or_touch(
        self, session: AsyncSession, *, profile: TelegramProfile, locale: str
    ) -> tuple[User, bool]:
        """Create the user on first contact (exactly once, also under concurrency) or refresh them.

        Returns the user and whether this call created them. A returning user costs one read: the
        row is written only when Telegram's profile changed or `last_seen_at` is older than
        LAST_SEEN_RESOLUTION (the admin's "active today" needs no finer clock).
        """
        user = await session.scalar(_USER_BY_ID, {"telegram_id": profile.telegram_id})
        return await self.registered_or_touched(session, user, profile=profile, locale=locale)

    async def registered_or_touched(
        self, session: AsyncSession, user: User | None, *, profile: TelegramProfile, locale: str
    ) -> tuple[User, bool]:
        """register_or_touch with the user's row already read in this transaction (`user`, None
        when there was none)."""
        now = self._clock.now()
        if user is not None:
            if (user.username, user.first_name, user.last_name) != (
                profile.username,
                profile.first_name,
                profile.last_name,
            ) or now - user.last_seen_at >= LAST_SEEN_RESOLUTION:
                await self._touch(session, profile=profile, now=now)
            return user, False
        created = await insert_ignore(
            session,
            User.__table__,  # type: ignore[arg-type]
            {
                "telegram_id": profile.telegram_id,
                "username": profile.username,
                "first_name": profile.first_name,
                "last_name": profile.last_name,
                "language": locale,
                "telegram_language_code": profile.language_code,
                "is_blocked": False,
                "blocked_notified": False,
                "created_at": now,
                "last_seen_at": now,
            },
            conflict_columns=["telegram_id"],
        )
        if not created:  # registered meanwhile by a concurrent update
            await self._touch(session, profile=profile, now=now)
        else:
            await self._ledger.ensure_account(session=session, user_id=profile.telegram_id)
            # Once per user: the bonus is keyed by the user id in the ledger.
            await self._ledger.grant_welcome_bonus(
                session=session, user_id=profile.telegram_id, amount=self._welcome_bonus
            )
        user = await session.scalar(
            select(User)
            .where(User.telegram_id == profile.telegram_id)
            .execution_options(populate_existing=True)
        )
        assert user is not None
        return user, created

    @staticmethod
    async def _touch(session: AsyncSession, *, profile: TelegramProfile, now: datetime) -> None:
        # An ORM UPDATE: the User already loaded in this session gets the new values too.
        await session.execute(
            update(User)
            .where(User.telegram_id == profile.telegram_id)
            .values(
                username=profile.username,
                first_name=profile.first_name,
                last_name=profile.last_name,
                last_seen_at=now,
            )
        )

    async def get(self, session: AsyncSession, *, telegram_id: int) -> User | None:
        return await session.get(User, telegram_id)

    async def set_transcription_language(
        self, session: AsyncSession, *, telegram_id: int, language: str | None
    ) -> None:
        """None: detect the language of each recording."""
        await session.execute(
            update(User).where(User.telegram_id == telegram_id).values(transcription_language=language)
        )

    async def choose_transcription_language(
        self, session: AsyncSession, *, telegram_id: int, choice: str
    ) -> str | None:
        """One of TRANSCRIPTION_LANGUAGES, stored ("auto" as None) and returned. Raises
        UnknownLanguage for anything else."""
        if choice not in TRANSCRIPTION_LANGUAGES:
            raise UnknownLanguage(choice)
        language = None if choice == "auto" else choice
        await self.set_transcription_language(session, telegram_id=telegram_id, language=language)
        return language

    async def set_language(self, session: AsyncSession, *, telegram_id: int, language: str) -> None:
        await session.execute(update(User).where(User.telegram_id == telegram_id).values(language=language))
