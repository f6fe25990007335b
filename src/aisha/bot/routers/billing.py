"""/balance with history, /prices, top-ups with Telegram Stars, /terms, admin refunds (/paysupport:
see the support router). Each handler: one billing call, then what `bot/presenters/billing.py` shows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message, PreCheckoutQuery
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.errors import AlreadyRefunded, InsufficientCredits, PaymentNotFound
from aisha.billing.payments import payment_key
from aisha.billing.statement import account_view
from aisha.bot import resume
from aisha.bot.keyboards import menu_button
from aisha.bot.paywall import Buy, TopUp, show_packages
from aisha.bot.presenters import billing as present
from aisha.bot.presenters.billing import HISTORY_PAGE_SIZE, History
from aisha.bot.replies import reply_after_commit
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

log = structlog.get_logger(__name__)


async def show_balance(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
    view = await account_view(session, user_id=user.telegram_id, limit=HISTORY_PAGE_SIZE, offset=0)
    await present.show_account(message, t, view)


async def turn_page(
    query: CallbackQuery,
    callback_data: History,
    session: AsyncSession,
    user: User,
    t: Texts,
) -> None:
    if callback_data.offset < 0 or not isinstance(query.message, Message):
        await query.answer(t("errors.bad_button"), show_alert=True)
        return
    view = await account_view(
        session,
        user_id=user.telegram_id,
        limit=HISTORY_PAGE_SIZE,
        offset=callback_data.offset,
    )
    await present.show_account(query.message, t, view, edit=True)
    await query.answer()


async def show_prices(message: Message, t: Texts, services: Services) -> None:
    await message.answer(present.prices_text(t, services.prices))


async def topup_command(message: Message, t: Texts, services: Services) -> None:
    await show_packages(message, t, services.payments.packages)


async def topup_pressed(query: CallbackQuery, t: Texts, services: Services) -> None:
    await query.answer()
    if isinstance(query.message, Message):
        await show_packages(query.message, t, services.payments.packages)


async def buy(
    query: CallbackQuery, callback_data: Buy, user: User, t: Texts, bot: Bot, services: Services
) -> None:
    package = services.prices.package(callback_data.package)
    if package is None:
        await query.answer(t("payments.error.package_gone"), show_alert=True)
        return
    await query.answer()
    payload = services.payments.make_invoice_payload(user_id=user.telegram_id, package=package)
    await present.send_invoice(bot, t, chat_id=user.telegram_id, package=package, payload=payload)


async def pre_checkout(query: PreCheckoutQuery, session: AsyncSession, t: Texts, services: Services) -> None:
    # Telegram waits at most 10 seconds for this answer: only local checks happen here.
    error = await services.payments.validate_pre_checkout(
        session=session,
        user_id=query.from_user.id,
        currency=query.currency,
        total_amount=query.total_amount,
        payload=query.invoice_payload,
    )
    if error is None:
        await query.answer(ok=True)
    else:
        log.warning("payment.pre_checkout_refused", user_id=query.from_user.id, reason=error)
        await query.answer(ok=False, error_message=t(error))


async def paid(
    message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext, services: Services
) -> None:
    payment = message.successful_payment
    assert payment is not None
    result = await services.payments.record_successful_payment(
        session=session,
        user_id=user.telegram_id,
        telegram_payment_charge_id=payment.telegram_payment_charge_id,
        provider_payment_charge_id=payment.provider_payment_charge_id,
        currency=payment.currency,
        total_amount=payment.total_amount,
        payload=payment.invoice_payload,
    )
    log.info("payment.credited", user_id=user.telegram_id, credits=result.credits, replayed=result.replayed)
    # Owed with the credits, sent after commit: a user who blocked the bot right after paying
    # (or a Telegram hiccup) can't undo the payment.
    await services.notices.owe(
        session=session,
        key="thanks:" + payment_key(payment.telegram_payment_charge_id),
        chat_id=user.telegram_id,
        text=present.thanks_text(t, result),
    )
    if result.replayed:  # the same payment again: offered when it was first credited
        return
    intent = await resume.pending(
        services, session, state, user_id=user.telegram_id, now=services.clock.now()
    )
    if intent is None:
        return
    found = await resume.offer(services, session, t, user_id=user.telegram_id, intent=intent)
    if found is not None:
        # After the thanks, once the credits are committed; a lost offer loses no money.
        reply_after_commit(session, lambda: message.answer(found.text, reply_markup=found.keyboard))


async def refunded(message: Message, session: AsyncSession, user: User, services: Services) -> None:
    refund = message.refunded_payment
    assert refund is not None
    await services.payments.record_refunded_payment(
        session=session,
        user_id=user.telegram_id,
        telegram_payment_charge_id=refund.telegram_payment_charge_id,
    )


async def terms(message: Message, t: Texts) -> None:
    await message.answer(t("billing.terms"))


async def refund(
    message: Message, command: CommandObject, session: AsyncSession, t: Texts, services: Services
) -> None:
    charge_id = (command.args or "").strip()
    if not charge_id:
        await message.answer(t("admin.refund.usage"))
        return
    payments = services.payments
    try:
        # The credits are taken back and the refund owed, committed with this update...
        result = await payments.refund(session=session, telegram_payment_charge_id=charge_id)
    except (PaymentNotFound, AlreadyRefunded, InsufficientCredits) as error:
        await message.answer(present.refund_error_text(t, error))
        return

    async def ask_telegram() -> None:
        # ...then Telegram is asked, outside any transaction (the sweep asks again if need be),
        # and the admin told; a reply that fails changes nothing.
        completion = await payments.complete_refund(telegram_payment_charge_id=charge_id)
        await message.answer(present.refund_text(t, result, completion))

    reply_after_commit(session, ask_telegram)


def create_router(services: Services) -> Router:
    """A fresh router of the module's handlers (each dispatcher needs its own); `services` gives
    the filters that depend on settings: the menu's words and the admins."""
    router = Router(name="billing")
    router.message.register(show_balance, menu_button(services.translator, "menu.balance"))
    router.message.register(show_balance, Command("balance"))
    router.callback_query.register(turn_page, History.filter())
    router.message.register(show_prices, Command("prices"))
    router.message.register(topup_command, Command("topup"))
    router.callback_query.register(topup_pressed, TopUp.filter())
    router.callback_query.register(buy, Buy.filter())
    router.pre_checkout_query.register(pre_checkout)
    router.message.register(paid, F.successful_payment)
    router.message.register(refunded, F.refunded_payment)
    router.message.register(terms, Command("terms"))
    router.message.register(refund, Command("refund"), F.from_user.id.in_(services.settings.admin_ids))
    return router
