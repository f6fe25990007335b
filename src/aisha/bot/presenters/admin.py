"""What the operator sees of /admin: the panel, statistics, user cards, the credits flow's
questions and confirmations, and every refusal of the admin service in words."""

from __future__ import annotations

from aiogram import html
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from aisha.admin.errors import MAX_ADJUST_AMOUNT, MAX_REASON_LENGTH, AdminError, BroadcastRefused, TakeRefused
from aisha.admin.models import Stats, UserCard
from aisha.billing.errors import InvalidAmount
from aisha.i18n import Texts


class AdminMenu(CallbackData, prefix="adm"):
    action: str  # stats | stop


class AdminUserAction(CallbackData, prefix="admu"):
    action: str  # refresh | grant | take | block | unblock
    user_id: int


class CreditsAnswer(CallbackData, prefix="admc"):
    action: str  # confirm | cancel
    # The flow's id, also its idempotency key: a replayed Confirm applies once, and the buttons
    # of an older confirmation can't confirm a newer flow.
    op: str


def error_text(t: Texts, error: AdminError | TakeRefused | InvalidAmount) -> str:
    """A refusal of the admin service (or the ledger's, for a take below zero) in words."""
    if isinstance(error, TakeRefused):
        return t("admin.take_refused", id=error.user_id, balance=error.balance, amount=error.required)
    if isinstance(error, InvalidAmount):
        return t("admin.error.bad_amount")
    if isinstance(error, BroadcastRefused):  # Telegram's words quote the admin's tags
        return t(error.key, reason=html.quote(error.reason))
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
    text = t(
        "admin.stats",
        users=stats.users_total,
        today=stats.active_today,
        week=stats.active_week,
        blocked=stats.blocked,
        topups=stats.topups,
        spend=stats.spend,
        features=features,
    )
    if stats.refunds_waiting:
        text += "\n\n" + t("admin.stats_refunds_waiting", count=stats.refunds_waiting)
        text += "".join(
            f"\n<code>/refund {html.quote(charge)}</code>" for charge in stats.waiting_refund_charges
        )
    return text


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


def ask_reason_text(t: Texts) -> str:
    return t("admin.credits.ask_reason", max=MAX_REASON_LENGTH)


def confirm_text(t: Texts, card: UserCard, *, take: bool, amount: int, reason: str) -> str:
    return t(
        "admin.credits.confirm_take" if take else "admin.credits.confirm_grant",
        count=amount,
        user=user_label(card),
        reason=html.quote(reason),
    )


def adjusted_text(t: Texts, *, user_id: int, take: bool, amount: int, balance: int) -> str:
    return t("admin.taken" if take else "admin.granted", id=user_id, amount=amount, balance=balance)


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
