"""What billing shows: /balance with its statement, /prices, invoices, thanks, /terms, refunds."""

from __future__ import annotations

from aiogram import Bot, html
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Message

from aisha.billing.errors import (
    AlreadyRefunded,
    InsufficientCredits,
    PaymentNotFound,
    RefundInProgress,
)
from aisha.billing.payments import STARS_CURRENCY
from aisha.billing.prices import PriceList, StarPackage
from aisha.billing.results import PaymentResult, RefundCompletion, RefundOutcome, RefundResult
from aisha.billing.service import DEFAULT_DESCRIPTIONS
from aisha.billing.statement import AccountView, Operation, OperationState, StatementPage
from aisha.bot.paywall import topup_button
from aisha.i18n import Texts

HISTORY_PAGE_SIZE = 5

# The errors an admin's /refund can meet, each told in its own words.
RefundError = PaymentNotFound | RefundInProgress | AlreadyRefunded | InsufficientCredits


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


async def show_account(message: Message, t: Texts, view: AccountView, *, edit: bool = False) -> None:
    """/balance: a new message, or the same one turned to another page."""
    text = balance_text(t, balance=view.balance, held=view.held, page=view.page)
    keyboard = balance_keyboard(t, view.page)
    if edit:
        await message.edit_text(text, reply_markup=keyboard)
    else:
        await message.answer(text, reply_markup=keyboard)


def prices_text(t: Texts, prices: PriceList) -> str:
    return t(
        "billing.prices",
        avatar_portrait=prices.avatar_portrait,
        avatar_style=prices.avatar_style,
        image=prices.image,
        image_no_avatar=prices.image_no_avatar,
        transcription_minute=prices.transcription_minute,
        photo_to_prompt=prices.photo_to_prompt,
    )


async def send_invoice(bot: Bot, t: Texts, *, chat_id: int, package: StarPackage, payload: str) -> None:
    """The Stars invoice of one package."""
    await bot.send_invoice(
        chat_id=chat_id,
        title=t("billing.invoice_title", credits=package.credits),
        description=t("billing.invoice_description", credits=package.credits),
        payload=payload,
        currency=STARS_CURRENCY,
        prices=[
            LabeledPrice(label=t("billing.invoice_label", credits=package.credits), amount=package.stars)
        ],
        provider_token="",
    )


def thanks_text(t: Texts, result: PaymentResult) -> str:
    return t("billing.thanks", credits=result.credits, balance=result.balance)


def refund_error_text(t: Texts, error: RefundError) -> str:
    if isinstance(error, PaymentNotFound):
        return t("admin.refund.not_found")
    if isinstance(error, RefundInProgress):
        return t("admin.refund.in_progress")
    if isinstance(error, AlreadyRefunded):
        return t("admin.refund.already")
    return t("admin.refund.spent", balance=error.balance, credits=error.required)


def refund_text(t: Texts, result: RefundResult, completion: RefundCompletion) -> str:
    if completion.outcome is RefundOutcome.REFUNDED:
        return t("admin.refund.done", stars=result.stars, credits=result.credits)
    if completion.outcome is RefundOutcome.REFUSED:
        return t("admin.refund.telegram_failed", error=html.quote(completion.reason or "?"))
    return t("admin.refund.pending", stars=result.stars, credits=result.credits)
