"""/admin and its commands: statistics, user cards, credits by hand, blocking, broadcasts.

Only ADMIN_IDS reach any of it: the commands are filtered by sender, and every handler (also
every button, whose callback data anyone can forge, and every step of the credits flow) checks
the sender again itself.

The card's Grant/Take buttons start a flow (amount → reason → Confirm/Cancel) kept in the FSM; the
confirmation goes through AdminService.adjust_credits like /grant and the CLI. What the operator
reads is drawn by `aisha.bot.presenters.admin`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import structlog
from aiogram import F, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message, Update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.admin.errors import AdminError, TakeRefused, UserNotFound
from aisha.admin.models import UserCard
from aisha.admin.service import clean_reason
from aisha.billing.errors import InvalidAmount
from aisha.bot.presenters import admin as present
from aisha.bot.presenters.admin import AdminMenu, AdminUserAction, CreditsAnswer
from aisha.bot.replies import reply_after_commit
from aisha.i18n import Texts

if TYPE_CHECKING:
    from aisha.admin.service import AdminService
    from aisha.container import Services

log = structlog.get_logger(__name__)
REFUSED = (AdminError, TakeRefused, InvalidAmount)


class CreditsFlow(StatesGroup):
    """The card's grant/take; the FSM data holds user_id, take, amount, reason and op."""

    amount = State()
    reason = State()
    confirm = State()


def _admin(message: Message, services: Services) -> AdminService | None:
    """The admin service when the sender is an admin; None for anyone else."""
    sender = message.from_user.id if message.from_user else None
    return services.admin if services.admin.is_admin(user_id=sender) else None


async def _forbidden(query: CallbackQuery, t: Texts, services: Services) -> bool:
    """Answers a non-admin's press (callback data is anyone's to forge) and says so."""
    if services.admin.is_admin(user_id=query.from_user.id):
        return False
    log.warning("admin.forbidden_callback", user_id=query.from_user.id)
    await query.answer(t("errors.bad_button"), show_alert=True)
    return True


async def panel(message: Message, t: Texts, services: Services) -> None:
    if _admin(message, services) is not None:
        await message.answer(t("admin.panel"), reply_markup=present.panel_keyboard(t))


async def menu(
    query: CallbackQuery, callback_data: AdminMenu, session: AsyncSession, t: Texts, services: Services
) -> None:
    if await _forbidden(query, t, services):
        return
    await query.answer()
    if not isinstance(query.message, Message):
        return
    if callback_data.action == "stats":
        await query.message.answer(present.stats_text(t, await services.admin.stats(session=session)))
    elif callback_data.action == "stop":
        stopped = await services.admin.stop_broadcasts(session=session)
        await query.message.answer(t("admin.broadcast_stopped", count=stopped))


async def find_user(
    message: Message, command: CommandObject, session: AsyncSession, t: Texts, services: Services
) -> None:
    if (admin := _admin(message, services)) is None:
        return
    if not (command.args or "").strip():
        await message.answer(t("admin.usage.user"))
        return
    try:
        card = await admin.user(session=session, query=command.args or "")
    except AdminError as error:
        await message.answer(present.error_text(t, error))
        return
    await message.answer(present.card_text(t, card), reply_markup=present.card_keyboard(t, card))


async def user_action(
    query: CallbackQuery,
    callback_data: AdminUserAction,
    session: AsyncSession,
    t: Texts,
    state: FSMContext,
    services: Services,
) -> None:
    if await _forbidden(query, t, services):
        return
    action, user_id = callback_data.action, str(callback_data.user_id)
    try:
        if action in ("block", "unblock"):
            card = await services.admin.block(session=session, query=user_id, blocked=action == "block")
        else:
            card = await services.admin.user(session=session, query=user_id)
    except AdminError as error:
        await query.answer(present.error_text(t, error), show_alert=True)
        return
    await query.answer()
    if not isinstance(query.message, Message):
        return
    if action in ("grant", "take"):
        take = action == "take"
        await state.set_state(CreditsFlow.amount)
        await state.set_data({"user_id": card.telegram_id, "take": take})
        await query.message.answer(present.ask_amount_text(t, card, take=take))
        return
    await query.message.edit_text(present.card_text(t, card), reply_markup=present.card_keyboard(t, card))


# --- the card's grant/take flow ------------------------------------------------------------------


async def _flow_card(
    message: Message, session: AsyncSession, t: Texts, state: FSMContext, services: Services
) -> UserCard | None:
    """The flow's user; None (and the flow ended) when the admin is gone, the data is broken
    or the user was deleted meanwhile."""
    user_id = (await state.get_data()).get("user_id")
    admin = _admin(message, services)
    if admin is None or not isinstance(user_id, int):
        await state.clear()
        return None
    card = await admin.find_user(session=session, query=str(user_id))
    if card is None:
        await state.clear()
        await message.answer(t(UserNotFound.key))
    return card


async def cancel_flow(message: Message, t: Texts, state: FSMContext) -> None:
    await state.clear()
    await message.answer(t("admin.credits.cancelled"))


async def amount_sent(
    message: Message, session: AsyncSession, t: Texts, state: FSMContext, services: Services
) -> None:
    card = await _flow_card(message, session, t, state, services)
    if card is None:
        return
    take = bool((await state.get_data()).get("take"))
    try:
        amount = await services.admin.check_amount(
            session=session, user_id=card.telegram_id, text=message.text or "", take=take
        )
    except REFUSED as error:
        await message.answer(
            present.error_text(t, error) + "\n" + present.ask_amount_text(t, card, take=take)
        )
        return
    await state.update_data(amount=amount)
    await state.set_state(CreditsFlow.reason)
    await message.answer(present.ask_reason_text(t))


async def reason_sent(
    message: Message, session: AsyncSession, t: Texts, state: FSMContext, services: Services
) -> None:
    card = await _flow_card(message, session, t, state, services)
    if card is None:
        return
    try:
        reason = clean_reason(message.text or "")
    except AdminError as error:
        await message.answer(present.error_text(t, error) + "\n" + present.ask_reason_text(t))
        return
    data = await state.get_data()
    op = uuid.uuid4().hex
    await state.update_data(reason=reason, op=op)
    await state.set_state(CreditsFlow.confirm)
    take, amount = bool(data.get("take")), int(data.get("amount", 0))
    await message.answer(
        present.confirm_text(t, card, take=take, amount=amount, reason=reason),
        reply_markup=present.confirm_keyboard(t, op),
    )


async def _confirmation(query: CallbackQuery, op: str, state: FSMContext) -> dict[str, Any] | None:
    """The flow's data when this press answers the confirmation being shown; None when it was
    pressed again after it was done or cancelled, or is an older confirmation's button."""
    data = await state.get_data()
    if (
        await state.get_state() != CreditsFlow.confirm.state
        or data.get("op") != op
        or not isinstance(data.get("user_id"), int)
        or not isinstance(data.get("amount"), int)
        or not isinstance(query.message, Message)
    ):
        return None
    return data


async def credits_answer(
    query: CallbackQuery,
    callback_data: CreditsAnswer,
    session: AsyncSession,
    t: Texts,
    state: FSMContext,
    services: Services,
) -> None:
    if await _forbidden(query, t, services):
        return
    data = await _confirmation(query, callback_data.op, state)
    if data is None or not isinstance(message := query.message, Message):
        await query.answer(t("admin.credits.expired"), show_alert=True)
        return
    await state.clear()
    user_id, take, amount = data["user_id"], bool(data.get("take")), data["amount"]
    outcome = t("admin.credits.cancelled")
    if callback_data.action == "confirm":
        try:
            result = await services.admin.adjust_credits(
                session=session,
                user_id=user_id,
                amount=-amount if take else amount,
                reason=str(data.get("reason", "")),
                key=f"card:{callback_data.op}",
                admin_id=query.from_user.id,
            )
            outcome = present.adjusted_text(
                t, user_id=user_id, take=take, amount=amount, balance=result.balance
            )
        except REFUSED as error:  # a take: the balance went down since the amount was typed
            outcome = present.error_text(t, error)
    card = await services.admin.find_user(session=session, query=str(user_id))

    async def show() -> None:
        await query.answer()
        if card is None:
            await message.edit_text(outcome)
        else:
            text = outcome + "\n\n" + present.card_text(t, card)
            await message.edit_text(text, reply_markup=present.card_keyboard(t, card))

    reply_after_commit(session, show)  # the credits have moved whatever happens to the card


# --- commands --------------------------------------------------------------------------------------


async def adjust(
    message: Message,
    command: CommandObject,
    session: AsyncSession,
    t: Texts,
    event_update: Update,
    services: Services,
) -> None:
    """/grant and /take <id or @username> <amount> <reason>."""
    if (admin := _admin(message, services)) is None:
        return
    take = command.command == "take"
    parts = (command.args or "").split(maxsplit=2)
    if len(parts) < 2:
        await message.answer(t("admin.usage.take" if take else "admin.usage.grant"))
        return
    try:
        done = await admin.adjust_by_query(
            session=session,
            query=parts[0],
            amount_text=parts[1],
            take=take,
            reason=parts[2] if len(parts) == 3 else "",
            key=f"update:{event_update.update_id}",
            admin_id=message.from_user.id if message.from_user else None,
        )
    except REFUSED as error:
        await message.answer(present.error_text(t, error))
        return
    text = present.adjusted_text(t, user_id=done.user_id, take=take, amount=done.amount, balance=done.balance)
    reply_after_commit(session, lambda: message.answer(text))


async def block(
    message: Message, command: CommandObject, session: AsyncSession, t: Texts, services: Services
) -> None:
    if (admin := _admin(message, services)) is None:
        return
    blocked = command.command == "block"
    target = (command.args or "").strip()
    if not target:
        await message.answer(t("admin.usage.block" if blocked else "admin.usage.unblock"))
        return
    try:
        card = await admin.block(session=session, query=target, blocked=blocked)
    except AdminError as error:
        await message.answer(present.error_text(t, error))
        return
    await message.answer(t("admin.blocked" if blocked else "admin.unblocked", id=card.telegram_id))


async def broadcast(
    message: Message, command: CommandObject, session: AsyncSession, t: Texts, services: Services
) -> None:
    if (admin := _admin(message, services)) is None or message.from_user is None:
        return
    # The admin's own formatting, as Telegram parsed it, goes out as it was written.
    parts = (message.html_text or "").split(maxsplit=1) if command.args else []
    try:
        await admin.start_broadcast(
            session=session, text=parts[1] if len(parts) == 2 else "", created_by=message.from_user.id
        )
    except AdminError as error:
        await message.answer(present.error_text(t, error))
        return
    await message.answer(t("admin.broadcast_queued"))


async def broadcast_stop(message: Message, session: AsyncSession, t: Texts, services: Services) -> None:
    if (admin := _admin(message, services)) is not None:
        stopped = await admin.stop_broadcasts(session=session)
        await message.answer(t("admin.broadcast_stopped", count=stopped))


def create_router(services: Services) -> Router:
    router = Router(name="admin")
    # Commands from anyone else fall through to the other routers as if they did not exist.
    router.message.filter(F.from_user.id.in_(services.settings.admin_ids))
    router.message.register(panel, Command("admin"))
    router.callback_query.register(menu, AdminMenu.filter())
    router.message.register(find_user, Command("admin_user"))
    router.callback_query.register(user_action, AdminUserAction.filter())
    router.message.register(cancel_flow, Command("cancel"), StateFilter(CreditsFlow))
    # Commands pass through: /help or /admin_user work mid-flow, /cancel ends it.
    router.message.register(amount_sent, CreditsFlow.amount, F.text, ~F.text.startswith("/"))
    router.message.register(reason_sent, CreditsFlow.reason, F.text, ~F.text.startswith("/"))
    router.callback_query.register(credits_answer, CreditsAnswer.filter())
    router.message.register(adjust, Command("grant"))
    router.message.register(adjust, Command("take"))
    router.message.register(block, Command("block", "unblock"))
    router.message.register(broadcast, Command("broadcast"))
    router.message.register(broadcast_stop, Command("broadcast_stop"))
    return router
