"""A paid action refused for credits, remembered so that a top-up can resume it in one press.

One intent per user (a newer one replaces it), kept in the FSM storage (the database, or Redis
when configured: it survives a restart) under a destiny of its own, so a wizard's `state.clear()`
never drops it. It is only a reminder: nothing is held or charged for it. After a paid top-up the
bot offers a "Continue" button carrying the intent's token; the press goes through the same
service call as the original button, and consumes the intent, so a second press finds nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.errors import AvatarNotFound, WrongAvatarStatus
from aisha.bot.paywall import TopUp
from aisha.db.base import parse_uuid
from aisha.generation.service import Source
from aisha.i18n import Texts

if TYPE_CHECKING:
    from aisha.container import Services

INTENT_TTL = timedelta(hours=24)
DESTINY = "resume"
INTENT_KEY = "intent"


class IntentKind(StrEnum):
    GENERATION = "gen"  # data: the generation draft (prompt, options, avatar)
    AVATAR = "avatar"  # data: {"avatar_id": the draft avatar to train}
    TRANSCRIPTION = "tr"  # data: {"transcript_id": the recording refused for credits}


class Resume(CallbackData, prefix="resume"):
    """The "Continue" button offered after a top-up."""

    kind: IntentKind
    token: str


@dataclass(frozen=True, slots=True)
class Intent:
    kind: IntentKind
    token: str
    data: dict[str, Any]
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


class Lookup(StrEnum):
    FOUND = "found"
    EXPIRED = "expired"
    STALE = "stale"  # used, replaced by a newer one, another user's, or never there


def _context(state: FSMContext) -> FSMContext:
    # Keyed by the user alone: a top-up is paid in the private chat, whichever chat the refusal was in.
    key = replace(state.key, chat_id=state.key.user_id, thread_id=None, destiny=DESTINY)
    return FSMContext(storage=state.storage, key=key)


async def remember(state: FSMContext, *, kind: IntentKind, data: dict[str, Any], now: datetime) -> Intent:
    """Remember `data` as the user's one intent, replacing any older one."""
    intent = Intent(kind=kind, token=secrets.token_hex(4), data=data, expires_at=now + INTENT_TTL)
    record = {
        "kind": kind.value,
        "token": intent.token,
        "data": data,
        "expires_at": intent.expires_at.isoformat(),
    }
    await _context(state).set_data({INTENT_KEY: record})
    return intent


async def current(state: FSMContext, *, now: datetime) -> Intent | None:
    """The user's intent if it has not expired (what a top-up offers to continue)."""
    intent = await _load(state)
    return intent if intent is not None and not intent.expired(now) else None


async def pending(
    services: Services, session: AsyncSession, state: FSMContext, *, user_id: int, now: datetime
) -> Intent | None:
    """What a paid top-up offers to continue, whichever way the top-up was started: the
    remembered intent, or the user's latest recording when its job refused it for credits after
    that (a job has no button press to remember it by: it is remembered here)."""
    intent = await current(state, now=now)
    refused = await services.transcription.last_refused_for_credits(
        session, user_id=user_id, since=now - INTENT_TTL
    )
    if refused is None:
        return intent
    transcript_id, refused_at = refused
    if intent is not None and (
        intent.data.get("transcript_id") == transcript_id.hex or intent.expires_at - INTENT_TTL >= refused_at
    ):
        return intent  # that very recording, or something refused after it
    data = {"transcript_id": transcript_id.hex}
    return await remember(state, kind=IntentKind.TRANSCRIPTION, data=data, now=now)


async def lookup(state: FSMContext, callback: Resume, *, now: datetime) -> tuple[Lookup, Intent | None]:
    """The intent a "Continue" button was offered for, if it is still the user's and of its kind."""
    intent = await _load(state)
    if intent is None or intent.token != callback.token or intent.kind is not callback.kind:
        return Lookup.STALE, None
    if intent.expired(now):
        await forget(state)
        return Lookup.EXPIRED, None
    return Lookup.FOUND, intent


async def forget(state: FSMContext) -> None:
    await _context(state).set_data({})


async def forget_matching(state: FSMContext, *, kind: IntentKind, key: str, value: object) -> None:
    """Forget the intent if it is for this very thing (a draft done through its own button)."""
    intent = await _load(state)
    if intent is not None and intent.kind is kind and intent.data.get(key) == value:
        await forget(state)


async def _load(state: FSMContext) -> Intent | None:
    record = (await _context(state).get_data()).get(INTENT_KEY)
    if not isinstance(record, dict):
        return None
    try:
        return Intent(
            kind=IntentKind(record["kind"]),
            token=str(record["token"]),
            data=dict(record["data"]),
            expires_at=datetime.fromisoformat(record["expires_at"]),
        )
    except (KeyError, ValueError, TypeError):  # written by another version: nothing to resume
        return None


@dataclass(frozen=True, slots=True)
class Offer:
    text: str
    keyboard: InlineKeyboardMarkup


async def offer(
    services: Services, session: AsyncSession, t: Texts, *, user_id: int, intent: Intent
) -> Offer | None:
    """What a top-up offers to continue: the intent's price against the balance now, or None when
    the intent can't be done any more (its avatar is gone, the draft trained or discarded)."""
    priced = await _priced(services, session, t, user_id=user_id, intent=intent)
    if priced is None:
        return None
    price, go, short = priced
    balance = await services.ledger.get_balance(session=session, user_id=user_id)
    if balance >= price:
        button = InlineKeyboardButton(
            text=go, callback_data=Resume(kind=intent.kind, token=intent.token).pack()
        )
    else:  # the top-up was not enough: the intent stays remembered for the next one
        button = InlineKeyboardButton(text=short, callback_data=TopUp().pack())
    return Offer(text=t("resume.offer"), keyboard=InlineKeyboardMarkup(inline_keyboard=[[button]]))


async def _priced(
    services: Services, session: AsyncSession, t: Texts, *, user_id: int, intent: Intent
) -> tuple[int, str, str] | None:
    """The intent's price and its two button labels (continue, top up first); None when it can't
    be done any more."""
    if intent.kind is IntentKind.GENERATION:
        draft = intent.data
        avatar_id = parse_uuid(str(draft.get("avatar_id") or ""))
        if avatar_id is not None and (
            await services.generation.avatar_choice(session=session, user_id=user_id, avatar_id=avatar_id)
            is None
        ):
            return None
        price = services.generation.quote(
            num_images=int(draft["n"]), with_avatar=avatar_id is not None, source=Source(draft["source"])
        )
        return price, t("resume.button.generation", price=price), t("generation.button.topup", price=price)
    if intent.kind is IntentKind.AVATAR:
        avatar_id = parse_uuid(str(intent.data.get("avatar_id") or ""))
        if avatar_id is None:
            return None
        try:
            review = await services.avatars.review(session=session, user_id=user_id, avatar_id=avatar_id)
        except (AvatarNotFound, WrongAvatarStatus):
            return None
        price = services.avatars.price(review.type)
        go = t("resume.button.avatar", name=review.name, price=price)  # a button is plain text
        return price, go, t("avatars.button.topup", price=price)
    transcript_id = parse_uuid(str(intent.data.get("transcript_id") or ""))
    refused = await services.transcription.refused_for_credits(
        session, user_id=user_id, transcript_id=transcript_id
    )
    if refused is None:
        return None
    price = refused.required
    return (
        price,
        t("resume.button.transcription", price=price),
        t("transcription.button.topup", price=price),
    )


def answer_for(lookup_result: Lookup) -> str:
    """The locale key of the alert for a "Continue" press that finds nothing to continue."""
    return "resume.expired" if lookup_result is Lookup.EXPIRED else "resume.stale"
