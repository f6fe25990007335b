"""/balance with history, /prices, top-ups with Telegram Stars, /terms, admin refunds (/paysupport:
see the support router)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from aiogram import Bot, F, Router, html
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    PreCheckoutQuery,
)
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.billing.errors import AlreadyRefunded, InsufficientCredits, PaymentNotFound, RefundInProgress
from aisha.billing.payments import STARS_CURRENCY, RefundCompletion, RefundOutcome, RefundResult, payment_key
from aisha.billing.service import DEFAULT_DESCRIPTIONS
from aisha.billing.statement import Operation, OperationState, StatementPage, statement
from aisha.bot import resume
from aisha.bot.keyboards import menu_button
from aisha.bot.paywall import Buy, TopUp, show_packages, topup_button
from aisha.bot.replies import reply_after_commit
from aisha.i18n import Texts
from aisha.users.models import User

if TYPE_CHECKING:
    from aisha.container import Services

HISTORY_PAGE_SIZE = 5
log = structlog.get_logger(__name__)


class History(CallbackData, prefix="hist"):
    offset: int


def describe(t: Texts, operation: Operation) -> str:
    """The operation's name in the user's language (HTML-safe)."""
    try:
        # Arguments may hold user text (an avatar's name): escape it, the history is HTML.
        args = operation.description_args
        quoted = {k: html.quote(v) if isinstance(v, str) else v for k, v in args.items()}
        return t(operation.description, **quoted)
    except (KeyError, IndexError, ValueError):
        return t(DEFAULT_DESCRIPTIONS[operation.kind])


def signed(amount: int) -> str:
    """+110, −5 (a true minus sign, as on a bank statement), 0."""
    return f"+{amount}" if amount > 0 else f"−{-amount}" if amount < 0 else "0"


def operation_line(t: Texts, operation: Operation) -> str:
    """One line of the statement: a job with what it finally cost, or holds while it runs."""
    what = describe(t, operation)
    if operation.state is not OperationState.DONE:
        what = t(f"billing.operation.{operation.state.value}", what=what)
    when = operation.started_at.strftime(t("billing.date_format"))
    return t("billing.history_line", when=when, amount=signed(operation.amount), what=what)


def balance_text(t: Texts, *, balance: int, held: int, page: StatementPage) -> str:
    lines = [t("billing.balance", balance=balance)]
    if held:
        lines.append(t("billing.held", held=held))
    lines.append("")
    if page.operations:
        first, last = page.offset + 1, page.offset + len(page.operations)
        lines.append(t("billing.history_title", first=first, last=last, total=page.total))
        lines.extend(operation_line(t, operation) for operation in page.operations)
    else:
        lines.append(t("billing.history_empty"))
    return "\n".join(lines)


def balance_keyboard(t: Texts, page: StatementPage) -> InlineKeyboardMarkup:
    navigation = []
    if page.offset > 0:
        newer = max(page.offset - page.limit, 0)
        navigation.append(
            InlineKeyboardButton(text=t("billing.newer"), callback_data=History(offset=newer).pack())
        )
    if page.has_more:
        older = page.offset + page.limit
        navigation.append(
            InlineKeyboardButton(text=t("billing.older"), callback_data=History(offset=older).pack())
        )
    rows = [navigation] if navigation else []
    rows.append([topup_button(t)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


def create_router(services: Services) -> Router:
    router = Router(name="billing")
    ledger, payments, prices = services.ledger, services.payments, services.prices

    async def render_balance(
        session: AsyncSession, user: User, t: Texts, offset: int
    ) -> tuple[str, InlineKeyboardMarkup]:
        balance = await ledger.get_balance(session=session, user_id=user.telegram_id)
        held = await ledger.held_total(session=session, user_id=user.telegram_id)
        page = await statement(session, user_id=user.telegram_id, limit=HISTORY_PAGE_SIZE, offset=offset)
        return balance_text(t, balance=balance, held=held, page=page), balance_keyboard(t, page)

    @router.message(Command("balance"))
    @router.message(menu_button(services.translator, "menu.balance"))
    async def show_balance(message: Message, session: AsyncSession, user: User, t: Texts) -> None:
        text, keyboard = await render_balance(session, user, t, 0)
        await message.answer(text, reply_markup=keyboard)

    @router.callback_query(History.filter())
    async def turn_page(
        query: CallbackQuery, callback_data: History, session: AsyncSession, user: User, t: Texts
    ) -> None:
        if callback_data.offset < 0 or not isinstance(query.message, Message):
            await query.answer(t("errors.bad_button"), show_alert=True)
            return
        text, keyboard = await render_balance(session, user, t, callback_data.offset)
        await query.message.edit_text(text, reply_markup=keyboard)
        await query.answer()

    @router.message(Command("prices"))
    async def show_prices(message: Message, t: Texts) -> None:
        await message.answer(
            t(
                "billing.prices",
                avatar_portrait=prices.avatar_portrait,
                avatar_style=prices.avatar_style,
                image=prices.image,
                image_no_avatar=prices.image_no_avatar,
                transcription_minute=prices.transcription_minute,
                photo_to_prompt=prices.photo_to_prompt,
            )
        )

    @router.message(Command("topup"))
    async def topup_command(message: Message, t: Texts) -> None:
        await show_packages(message, t, payments.packages)

    @router.callback_query(TopUp.filter())
    async def topup_pressed(query: CallbackQuery, t: Texts) -> None:
        await query.answer()
        if isinstance(query.message, Message):
            await show_packages(query.message, t, payments.packages)

    @router.callback_query(Buy.filter())
    async def buy(query: CallbackQuery, callback_data: Buy, user: User, t: Texts, bot: Bot) -> None:
        package = prices.package(callback_data.package)
        if package is None:
            await query.answer(t("payments.error.package_gone"), show_alert=True)
            return
        await query.answer()
        await bot.send_invoice(
            chat_id=user.telegram_id,
            title=t("billing.invoice_title", credits=package.credits),
            description=t("billing.invoice_description", credits=package.credits),
            payload=payments.make_invoice_payload(user_id=user.telegram_id, package=package),
            currency=STARS_CURRENCY,
            prices=[
                LabeledPrice(
                    label=t("billing.invoice_label", credits=package.credits),
                    amount=package.stars,
                )
            ],
            provider_token="",
        )

    @router.pre_checkout_query()
    async def pre_checkout(query: PreCheckoutQuery, session: AsyncSession, t: Texts) -> None:
        # Telegram waits at most 10 seconds for this answer: only local checks happen here.
        error = await payments.validate_pre_checkout(
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

    @router.message(F.successful_payment)
    async def paid(message: Message, session: AsyncSession, user: User, t: Texts, state: FSMContext) -> None:
        payment = message.successful_payment
        assert payment is not None
        result = await payments.record_successful_payment(
            session=session,
            user_id=user.telegram_id,
            telegram_payment_charge_id=payment.telegram_payment_charge_id,
            provider_payment_charge_id=payment.provider_payment_charge_id,
            currency=payment.currency,
            total_amount=payment.total_amount,
            payload=payment.invoice_payload,
        )
        log.info(
            "payment.credited", user_id=user.telegram_id, credits=result.credits, replayed=result.replayed
        )
        # Owed with the credits, sent after commit: a user who blocked the bot right after paying
        # (or a Telegram hiccup) can't undo the payment.
        await services.notices.owe(
            session=session,
            key="thanks:" + payment_key(payment.telegram_payment_charge_id),
            chat_id=user.telegram_id,
            text=t("billing.thanks", credits=result.credits, balance=result.balance),
        )
        if result.replayed:  # the same payment again: offered when it was first credited
            return
        intent = await resume.current(state, now=services.clock.now())
        if intent is None:
            return
        found = await resume.offer(services, session, t, user_id=user.telegram_id, intent=intent)
        if found is not None:
            # After the thanks, once the credits are committed; a lost offer loses no money.
            reply_after_commit(session, lambda: message.answer(found.text, reply_markup=found.keyboard))

    @router.message(F.refunded_payment)
    async def refunded(message: Message, session: AsyncSession, user: User) -> None:
        refund = message.refunded_payment
        assert refund is not None
        await payments.record_refunded_payment(
            session=session,
            user_id=user.telegram_id,
            telegram_payment_charge_id=refund.telegram_payment_charge_id,
        )

    @router.message(Command("terms"))
    async def terms(message: Message, t: Texts) -> None:
        await message.answer(t("billing.terms"))

    @router.message(Command("refund"), F.from_user.id.in_(services.settings.admin_ids))
    async def refund(message: Message, command: CommandObject, session: AsyncSession, t: Texts) -> None:
        charge_id = (command.args or "").strip()
        if not charge_id:
            await message.answer(t("admin.refund.usage"))
            return
        try:
            # The credits are taken back and the refund owed, committed with this update...
            result = await payments.refund(session=session, telegram_payment_charge_id=charge_id)
        except PaymentNotFound:
            await message.answer(t("admin.refund.not_found"))
            return
        except RefundInProgress:
            await message.answer(t("admin.refund.in_progress"))
            return
        except AlreadyRefunded:
            await message.answer(t("admin.refund.already"))
            return
        except InsufficientCredits as error:
            await message.answer(t("admin.refund.spent", balance=error.balance, credits=error.required))
            return

        async def ask_telegram() -> None:
            # ...then Telegram is asked, outside any transaction (the sweep asks again if need be),
            # and the admin told; a reply that fails changes nothing.
            completion = await payments.complete_refund(telegram_payment_charge_id=charge_id)
            await message.answer(refund_text(t, result, completion))

        reply_after_commit(session, ask_telegram)

    return router


def refund_text(t: Texts, result: RefundResult, completion: RefundCompletion) -> str:
    if completion.outcome is RefundOutcome.REFUNDED:
        return t("admin.refund.done", stars=result.stars, credits=result.credits)
    if completion.outcome is RefundOutcome.REFUSED:
        return t("admin.refund.telegram_failed", error=html.quote(completion.reason or "?"))
    return t("admin.refund.pending", stars=result.stars, credits=result.credits)
