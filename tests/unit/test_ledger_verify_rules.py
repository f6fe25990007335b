"""The payment rules of `aisha ledger verify`: a payment against the entries that reference it."""

from __future__ import annotations

import uuid

from aisha.billing.models import EntryKind, PaymentStatus
from aisha.billing.payments import payment_key, refund_back_key, refund_key
from aisha.billing.verify.payments import _PAYMENT_RULES, _PaymentEntry, _PaymentRow

PAYER = 7


def payment(
    status: PaymentStatus = PaymentStatus.PAID, *, attempts: int = 0, shortfall: int = 0
) -> _PaymentRow:
    return _PaymentRow(
        id=uuid.uuid4(),
        user_id=PAYER,
        charge_id="ch",
        credits=110,
        status=status,
        refund_attempts=attempts,
        refund_shortfall=shortfall,
    )


def topup(amount: int = 110, *, key: str = payment_key("ch"), user_id: int = PAYER) -> _PaymentEntry:
    return _PaymentEntry(user_id=user_id, kind=EntryKind.TOPUP, amount=amount, key=key)


def refund(amount: int = -110, *, key: str = refund_key("ch")) -> _PaymentEntry:
    return _PaymentEntry(user_id=PAYER, kind=EntryKind.REFUND, amount=amount, key=key)


def problems(row: _PaymentRow, *entries: _PaymentEntry) -> list[str]:
    return [what for rule in _PAYMENT_RULES for what in rule(row, entries)]


def test_a_paid_and_a_refunded_payment_with_their_entries_are_clean() -> None:
    assert problems(payment(), topup()) == []
    assert problems(payment(PaymentStatus.REFUNDED), topup(), refund()) == []


def test_a_top_up_under_another_key_on_another_account() -> None:
    assert problems(payment(), topup(key="payment:other", user_id=8)) == [
        f"top-up entry keyed payment:other, expected {payment_key('ch')}",
        "top-up entry on account 8, not the payer's",
    ]


def test_a_paid_payment_with_a_refund_debit() -> None:
    assert problems(payment(), topup(), refund()) == ["paid, but has 1 refund debit entry (-110)"]


def test_a_refund_debit_of_the_wrong_amount_and_two_of_them() -> None:
    refunded = payment(PaymentStatus.REFUNDED)
    assert problems(refunded, topup(), refund(-100)) == [
        "refund debit entry of -100, expected -110 for 110 credits"
    ]
    assert problems(refunded, topup(), refund(), refund(key="refund:again")) == [
        "2 refund debit entries (-110, -110), expected one of -110"
    ]


def back(amount: int = 110, *, attempt: int = 1) -> _PaymentEntry:
    return _PaymentEntry(
        user_id=PAYER, kind=EntryKind.REFUND, amount=amount, key=refund_back_key("ch", attempt)
    )


def test_a_refund_under_way_has_its_debit_like_a_finished_one() -> None:
    assert problems(payment(PaymentStatus.REFUNDING, attempts=1), topup(), refund()) == []
    assert problems(payment(PaymentStatus.REFUNDING, attempts=1), topup()) == [
        "refunding, but has no refund debit entry (expected -110)"
    ]


def test_refused_refunds_are_debited_and_given_back_once_each() -> None:
    assert problems(payment(attempts=1), topup(), refund(), back()) == []
    second = refund(key=refund_key("ch", 2))
    assert problems(payment(PaymentStatus.REFUNDED, attempts=2), topup(), refund(), back(), second) == []
    assert problems(payment(attempts=1), topup(), refund()) == [
        "paid, but has no refund credit of refused refund 1 entry (expected +110)"
    ]
    assert problems(payment(attempts=1), topup(), refund(), back(), back()) == [
        "2 refund credit of refused refund 1 entries (+110, +110), expected one of +110"
    ]
    # Refunded on the second try, but the first one was never given back.
    assert problems(payment(PaymentStatus.REFUNDED, attempts=2), topup(), refund(), second) == [
        "refunded, but has no refund credit of refused refund 1 entry (expected +110)"
    ]


def test_a_refund_outside_the_bot_debits_what_was_left() -> None:
    refunded = payment(PaymentStatus.REFUNDED, attempts=1, shortfall=30)
    assert problems(refunded, topup(), refund(-80)) == []
    assert problems(refunded, topup(), refund()) == [
        "refund debit entry of -110, expected -80 for 110 credits"
    ]
    spent = payment(PaymentStatus.REFUNDED, attempts=1, shortfall=110)
    assert problems(spent, topup()) == []
    assert problems(spent, topup(), refund(-1)) == ["refunded, but has 1 refund debit entry (-1)"]


def test_a_refund_credit_no_refused_refund_explains() -> None:
    assert problems(payment(), topup(), back()) == [
        "1 refund credit entry (+110) that no refused refund explains"
    ]
