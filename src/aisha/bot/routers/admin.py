"""/admin and its commands: statistics, user cards, credits by hand, blocking, broadcasts.

Only ADMIN_IDS reach any of it: the commands are filtered by sender, and every handler (also
every button, whose callback data anyone can forge, and every step of the credits flow) checks
the sender again itself.

The card's Grant/Take buttons start a flow (amount → reason → Confirm/Cancel) kept in the FSM; the
confirmation goes through AdminService.adjust_credits like /grant and the CLI.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import structlog
from aiogram import F, Router, html
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.admin.service import (
    MAX_ADJUST_AMOUNT,
    MAX_REASON_LENGTH,
    AdminError,
    Stats,
    UserCard,
    UserNotFound,
    clean_reason,
    parse_amount,
)
from aisha.billing.errors import InsufficientCredits, InvalidAmount
from aisha.bot.replies import reply_after_commit
from aisha.db.session import after_commit
from aisha.i18n import Texts

if TYPE_CHECKING:
    from aisha.container import Services

log = structlog.get_logger(__name__)


class AdminMenu(CallbackData, prefix="adm"):
    action: str  # stats | stop


class AdminUserAction(CallbackData, prefix="admu"):
    action: str  # refresh | grant | take | block | unblock
    user_id: int


class CreditsFlow(StatesGroup):
    """The card's grant/take; the FSM data holds user_id, take, amount, reason and op."""

    amount = State()
    reason = State()
    confirm = State()


class CreditsAnswer(CallbackData, prefix="admc"):
    action: str  # confirm | cancel
    # The flow's id, also its idempotency key: a replayed Confirm applies once, and the buttons
    # of an older confirmation can't confirm a newer flow.
    op: str


def _sender(message: Message) -> int | None:
    return message.from_user.id if message.from_user else None


def error_text(t: Texts, error: AdminError) -> str:
    return t(error.key, **error.params)


def _usd(micro: int) -> str:
    return f"{micro / 1_000_000:.2f}"


def stats_text(t: Texts, stats: Stats) -> str:
    features = "\n".join(
        t(
            "admin.stats_feature",
            name=t(f"admin.feature.{f.name}"),
            succeeded=f.succeeded,
            in_flight=f.in_flight,
            failed=f.failed,
            credits=f.credits_captured,
            cost=_usd(f.provider_cost_micro_usd),
            margin=_usd(f.margin_micro_usd),
        )
        for f in stats.features
    )
    return t(
        "admin.stats",
        users=stats.users_total,
        today=stats.active_today,
        week=stats.active_week,
        blocked=stats.blocked,
        topups=stats.topups,
        spend=stats.spend,
        features=features,
    )


def card_text(t: Texts, card: UserCard) -> str:
    date_format = t("admin.date_format")
    return t(
        "admin.user_card",
        id=card.telegram_id,
        name=html.quote(card.first_name or ""),
        username=f"@{html.quote(card.username)}" if card.username else t("admin.none"),
        language=card.language,
        status=t("admin.status.blocked" if card.is_blocked else "admin.status.active"),
        balance=card.balance,
        held=card.held,
        created=card.created_at.strftime(date_format),
        last_seen=card.last_seen_at.strftime(date_format),
    )


def card_keyboard(t: Texts, card: UserCard) -> InlineKeyboardMarkup:
    def button(key: str, action: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(
            text=t(key), callback_data=AdminUserAction(action=action, user_id=card.telegram_id).pack()
        )

    block = (
        button("admin.button.unblock", "unblock")
        if card.is_blocked
        else button("admin.button.block", "block")
    )
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [button("admin.button.grant", "grant"), button("admin.button.take", "take")],
            [block, button("admin.button.refresh", "refresh")],
        ]
    )


def user_label(card: UserCard) -> str:
    name = html.quote(card.first_name or card.username or "")
    return f"{name} (<code>{card.telegram_id}</code>)" if name else f"<code>{card.telegram_id}</code>"


def ask_amount_text(t: Texts, card: UserCard, *, take: bool) -> str:
    return t(
        "admin.credits.ask_take" if take else "admin.credits.ask_grant",
        user=user_label(card),
        balance=card.balance,
        max=MAX_ADJUST_AMOUNT,
    )


def confirm_text(t: Texts, card: UserCard, *, take: bool, amount: int, reason: str) -> str:
    return t(
        "admin.credits.confirm_take" if take else "admin.credits.confirm_grant",
        count=amount,
        user=user_label(card),
        reason=html.quote(reason),
    )


def confirm_keyboard(t: Texts, op: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("admin.button.confirm"),
                    callback_data=CreditsAnswer(action="confirm", op=op).pack(),
                ),
                InlineKeyboardButton(
                    text=t("admin.button.cancel"), callback_data=CreditsAnswer(action="cancel", op=op).pack()
                ),
            ]
        ]
    )


def panel_keyboard(t: Texts) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=t("admin.button.stats"), callback_data=AdminMenu(action="stats").pack()
                )
            ],
            [
                InlineKeyboardButton(
                    text=t("admin.button.broadcast_stop"), callback_data=AdminMenu(action="stop").pack()
                )
            ],
        ]
    )


def create_router(services: Services) -> Router:
    router = Router(name="admin")
    admin = services.admin
    # Commands from anyone else fall through to the other routers as if they did not exist.
    router.message.filter(F.from_user.id.in_(services.settings.admin_ids))

    def allowed(user_id: int | None) -> bool:
        return admin.is_admin(user_id=user_id)

    async def resolve(session: AsyncSession, query: str) -> UserCard:
        card = await admin.find_user(session=session, query=query)
        if card is None:
            raise UserNotFound()
        return card

    async def forbidden(query: CallbackQuery, t: Texts) -> bool:
        """Answers a non-admin's press (callback data is anyone's to forge) and says so."""
        if allowed(query.from_user.id):
            return False
        log.warning("admin.forbidden_callback", user_id=query.from_user.id)
        await query.answer(t("errors.bad_button"), show_alert=True)
        return True

    @router.message(Command("admin"))
    async def panel(message: Message, t: Texts) -> None:
        if not allowed(_sender(message)):
            return
        await message.answer(t("admin.panel"), reply_markup=panel_keyboard(t))

    @router.callback_query(AdminMenu.filter())
    async def menu(query: CallbackQuery, callback_data: AdminMenu, session: AsyncSession, t: Texts) -> None:
        if await forbidden(query, t):
            return
        await query.answer()
        if not isinstance(query.message, Message):
            return
        if callback_data.action == "stats":
            await query.message.answer(stats_text(t, await admin.stats(session=session)))
        elif callback_data.action == "stop":
            stopped = await admin.stop_broadcasts(session=session)
            await query.message.answer(t("admin.broadcast_stopped", count=stopped))

    @router.message(Command("admin_user"))
    async def find_user(message: Message, command: CommandObject, session: AsyncSession, t: Texts) -> None:
        if not allowed(_sender(message)):
            return
        if not (command.args or "").strip():
            await message.answer(t("admin.usage.user"))
            return
        try:
            card = await resolve(session, command.args or "")
        except AdminError as error:
            await message.answer(error_text(t, error))
            return
        await message.answer(card_text(t, card), reply_markup=card_keyboard(t, card))

    @router.callback_query(AdminUserAction.filter())
    async def user_action(
        query: CallbackQuery,
        callback_data: AdminUserAction,
        session: AsyncSession,
        t: Texts,
        state: FSMContext,
    ) -> None:
        if await forbidden(query, t):
            return
        user_id = callback_data.user_id
        try:
            if callback_data.action in ("block", "unblock"):
                await admin.set_blocked(
                    session=session, user_id=user_id, blocked=callback_data.action == "block"
                )
            card = await resolve(session, str(user_id))
        except AdminError as error:
            await query.answer(error_text(t, error), show_alert=True)
            return
        await query.answer()
        if not isinstance(query.message, Message):
            return
        if callback_data.action in ("grant", "take"):
            take = callback_data.action == "take"
            await state.set_state(CreditsFlow.amount)
            await state.set_data({"user_id": card.telegram_id, "take": take})
            await query.message.answer(ask_amount_text(t, card, take=take))
            return
        await query.message.edit_text(card_text(t, card), reply_markup=card_keyboard(t, card))

    # --- the card's grant/take flow --------------------------------------------------------------

    async def flow_card(
        message: Message, session: AsyncSession, t: Texts, state: FSMContext
    ) -> UserCard | None:
        """The flow's user; None (and the flow ended) when the admin is gone, the data is broken
        or the user was deleted meanwhile."""
        user_id = (await state.get_data()).get("user_id")
        if not allowed(_sender(message)) or not isinstance(user_id, int):
            await state.clear()
            return None
        card = await admin.find_user(session=session, query=str(user_id))
        if card is None:
            await state.clear()
            await message.answer(t(UserNotFound.key))
        return card

    @router.message(Command("cancel"), StateFilter(CreditsFlow))
    async def cancel_flow(message: Message, t: Texts, state: FSMContext) -> None:
        await state.clear()
        await message.answer(t("admin.credits.cancelled"))

    # Commands pass through: /help or /admin_user work mid-flow, /cancel ends it.
    @router.message(CreditsFlow.amount, F.text, ~F.text.startswith("/"))
    async def amount_sent(message: Message, session: AsyncSession, t: Texts, state: FSMContext) -> None:
        card = await flow_card(message, session, t, state)
        if card is None:
            return
        take = bool((await state.get_data()).get("take"))
        try:
            amount = await admin.check_amount(
                session=session, user_id=card.telegram_id, text=message.text or "", take=take
            )
        except AdminError as error:
            await message.answer(error_text(t, error) + "\n" + ask_amount_text(t, card, take=take))
            return
        except InsufficientCredits as error:
            refused = t(
                "admin.take_refused", id=card.telegram_id, balance=error.balance, amount=error.required
            )
            await message.answer(refused + "\n" + ask_amount_text(t, card, take=take))
            return
        await state.update_data(amount=amount)
        await state.set_state(CreditsFlow.reason)
        await message.answer(t("admin.credits.ask_reason", max=MAX_REASON_LENGTH))

    @router.message(CreditsFlow.reason, F.text, ~F.text.startswith("/"))
    async def reason_sent(message: Message, session: AsyncSession, t: Texts, state: FSMContext) -> None:
        card = await flow_card(message, session, t, state)
        if card is None:
            return
        try:
            reason = clean_reason(message.text or "")
        except AdminError as error:
            await message.answer(
                error_text(t, error) + "\n" + t("admin.credits.ask_reason", max=MAX_REASON_LENGTH)
            )
            return
        data = await state.get_data()
        op = uuid.uuid4().hex
        await state.update_data(reason=reason, op=op)
        await state.set_state(CreditsFlow.confirm)
        await message.answer(
            confirm_text(
                t, card, take=bool(data.get("take")), amount=int(data.get("amount", 0)), reason=reason
            ),
            reply_markup=confirm_keyboard(t, op),
        )

    @router.callback_query(CreditsAnswer.filter())
    async def credits_answer(
        query: CallbackQuery, callback_data: CreditsAnswer, session: AsyncSession, t: Texts, state: FSMContext
    ) -> None:
        if await forbidden(query, t):
            return
        data = await state.get_data()
        user_id, take, amount = data.get("user_id"), bool(data.get("take")), data.get("amount")
        if (
            await state.get_state() != CreditsFlow.confirm.state
            or data.get("op") != callback_data.op
            or not isinstance(user_id, int)
            or not isinstance(amount, int)
            or not isinstance(query.message, Message)
        ):
            # Pressed again after it was done or cancelled, or an older confirmation's button.
            await query.answer(t("admin.credits.expired"), show_alert=True)
            return
        await state.clear()
        if callback_data.action == "confirm":
            try:
                result = await admin.adjust_credits(
                    session=session,
                    user_id=user_id,
                    amount=-amount if take else amount,
                    reason=str(data.get("reason", "")),
                    key=f"card:{callback_data.op}",
                    admin_id=query.from_user.id,
                )
                outcome = t(
                    "admin.taken" if take else "admin.granted",
                    id=user_id,
                    amount=amount,
                    balance=result.balance,
                )
            except InsufficientCredits as error:  # the balance went down since the amount was typed
                outcome = t("admin.take_refused", id=user_id, balance=error.balance, amount=amount)
            except AdminError as error:
                outcome = error_text(t, error)
            except InvalidAmount:
                outcome = t("admin.error.bad_amount")
        else:
            outcome = t("admin.credits.cancelled")
        card = await admin.find_user(session=session, query=str(user_id))
        message = query.message

        async def show() -> None:
            await query.answer()
            if card is None:
                await message.edit_text(outcome)
            else:
                await message.edit_text(
                    outcome + "\n\n" + card_text(t, card), reply_markup=card_keyboard(t, card)
                )

        reply_after_commit(session, show)  # the credits have moved whatever happens to the card

    async def adjust(
        message: Message,
        command: CommandObject,
        session: AsyncSession,
        t: Texts,
        event_update: Update,
        *,
        sign: int,
    ) -> None:
        name = "grant" if sign > 0 else "take"
        parts = (command.args or "").split(maxsplit=2)
        if len(parts) < 2:
            await message.answer(t(f"admin.usage.{name}"))
            return
        target, amount_text = parts[0], parts[1]
        reason = parts[2] if len(parts) == 3 else ""
        admin_id = message.from_user.id if message.from_user else None
        try:
            amount = parse_amount(amount_text)
            card = await resolve(session, target)
            result = await admin.adjust_credits(
                session=session,
                user_id=card.telegram_id,
                amount=sign * amount,
                reason=reason,
                key=f"update:{event_update.update_id}",
                admin_id=admin_id,
            )
        except AdminError as error:
            await message.answer(error_text(t, error))
            return
        except InvalidAmount:
            await message.answer(t("admin.error.bad_amount"))
            return
        except InsufficientCredits as error:
            await message.answer(
                t("admin.take_refused", id=card.telegram_id, balance=error.balance, amount=amount)
            )
            return
        key = "admin.granted" if sign > 0 else "admin.taken"
        text = t(key, id=card.telegram_id, amount=amount, balance=result.balance)
        reply_after_commit(session, lambda: message.answer(text))

    @router.message(Command("grant"))
    async def grant(
        message: Message, command: CommandObject, session: AsyncSession, t: Texts, event_update: Update
    ) -> None:
        if allowed(_sender(message)):
            await adjust(message, command, session, t, event_update, sign=1)

    @router.message(Command("take"))
    async def take(
        message: Message, command: CommandObject, session: AsyncSession, t: Texts, event_update: Update
    ) -> None:
        if allowed(_sender(message)):
            await adjust(message, command, session, t, event_update, sign=-1)

    @router.message(Command("block", "unblock"))
    async def block(message: Message, command: CommandObject, session: AsyncSession, t: Texts) -> None:
        if not allowed(_sender(message)):
            return
        blocked = command.command == "block"
        target = (command.args or "").strip()
        if not target:
            await message.answer(t("admin.usage.block" if blocked else "admin.usage.unblock"))
            return
        try:
            card = await resolve(session, target)
            await admin.set_blocked(session=session, user_id=card.telegram_id, blocked=blocked)
        except AdminError as error:
            await message.answer(error_text(t, error))
            return
        await message.answer(t("admin.blocked" if blocked else "admin.unblocked", id=card.telegram_id))

    @router.message(Command("broadcast"))
    async def broadcast(message: Message, command: CommandObject, session: AsyncSession, t: Texts) -> None:
        if not allowed(_sender(message)) or message.from_user is None:
            return
        # The admin's own formatting, as Telegram parsed it, goes out as it was written.
        parts = (message.html_text or "").split(maxsplit=1) if command.args else []
        text = parts[1].strip() if len(parts) == 2 else ""
        if not text:
            await message.answer(t("admin.usage.broadcast"))
            return
        broadcast_id = await admin.create_broadcast(
            session=session, text=text, created_by=message.from_user.id
        )

        async def enqueue() -> None:
            await admin.enqueue_broadcast(broadcast_id=broadcast_id)

        after_commit(session, enqueue)
        await message.answer(t("admin.broadcast_queued"))

    @router.message(Command("broadcast_stop"))
    async def broadcast_stop(message: Message, session: AsyncSession, t: Texts) -> None:
        if not allowed(_sender(message)):
            return
        stopped = await admin.stop_broadcasts(session=session)
        await message.answer(t("admin.broadcast_stopped", count=stopped))

    return router
