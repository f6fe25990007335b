"""The operator's /admin as the operator and as everyone else sees it: statistics, credits by hand,
blocking, broadcasts that stop and resume without sending anyone the text twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from aisha.admin.models import Broadcast, BroadcastStatus
from aisha.billing.models import CreditEntry, EntryKind
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.models import ImageGeneration
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.sandbox.faults import Fault
from aisha.users.models import User
from tests.conftest import Database
from tests.e2e.conftest import buttons, count, eventually, jobs_done, press, say

ADMIN = FakeUser(id=900, first_name="Op", language_code="en")
ALICE = FakeUser(id=5001, first_name="Alice", username="alice", language_code="en")
BOB = FakeUser(id=5002, first_name="Bob", language_code="ru")


@pytest.fixture
async def app(make_settings: Callable[..., Any], start_app: Callable[..., Any]) -> Runtime:
    runtime: Runtime = await start_app(make_settings(admin_ids=str(ADMIN.id)))
    return runtime


async def _balance(runtime: Runtime, user_id: int) -> int:
    async with runtime.services.sessions() as session:
        return await runtime.services.ledger.get_balance(session=session, user_id=user_id)


def _texts_to(telegram: FakeTelegramServer, chat_id: int) -> list[str]:
    return [c.params["text"] for c in telegram.calls_of("sendMessage") if c.params.get("chat_id") == chat_id]


async def _settle(telegram: FakeTelegramServer, user: FakeUser) -> None:
    """Waits until every update sent so far is handled, then makes a /help round trip (consuming
    its answer)."""
    await telegram.wait_until_handled()
    telegram.queue_update(telegram.message_update(user, "/help"))
    await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == user.id and "/avatar" in c.params["text"]
    )


async def _async(value: bool) -> bool:
    return value


async def test_non_admin_reaches_nothing_also_with_forged_buttons(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, BOB, "/start")
    start = await say(telegram, ALICE, "/start")
    telegram.clear_calls()
    for command in (
        "/admin",
        "/admin_user 5002",
        f"/grant {ALICE.id} 500 because",
        "/take 5002 1 x",
        "/block 5002",
        "/broadcast Hello everyone",
        "/broadcast_stop",
    ):
        telegram.queue_update(telegram.message_update(ALICE, command))
    for data in ("adm:stats", "adm:stop", "admu:block:5002", "admu:refresh:5002", "admu:grant:5001"):
        press(telegram, ALICE, data, start)
    await eventually(lambda: _async(len(telegram.calls_of("answerCallbackQuery")) == 5))
    await _settle(telegram, ALICE)

    texts = _texts_to(telegram, ALICE.id)
    assert not any("Admin" in t or "Statistics" in t or "Balance:" in t or "5002" in t for t in texts)
    assert not any("Broadcast" in t or "blocked" in t for t in texts)
    assert telegram.calls_of("editMessageText") == []
    answers = telegram.calls_of("answerCallbackQuery")
    assert len(answers) == 5
    assert all("Statistics" not in (a.params.get("text") or "") for a in answers)
    assert await _balance(app, ALICE.id) == 0
    assert await count(db, CreditEntry, CreditEntry.kind == EntryKind.ADJUSTMENT) == 0
    assert await count(db, User, User.is_blocked.is_(True)) == 0
    assert await count(db, Broadcast) == 0
    assert _texts_to(telegram, BOB.id) == []


async def test_admin_panel_shows_statistics_that_match(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    for user in (ALICE, BOB):
        await say(telegram, user, "/start")
    services = app.services
    async with unit_of_work(services.sessions) as session:
        await services.ledger.credit(session=session, user_id=ALICE.id, amount=110, key="t1")
        await services.ledger.credit(session=session, user_id=BOB.id, amount=40, key="t2")
        await services.ledger.charge(session=session, user_id=BOB.id, amount=3, key="c1")
        hold = await services.ledger.hold(
            session=session, user_id=ALICE.id, amount=10, key="h1", reference="generation:x"
        )
        await services.ledger.capture(session=session, hold_id=hold.hold_id, amount=8, key="cap1")
        session.add(
            ImageGeneration(
                user_id=ALICE.id,
                status=JobStatus.SUCCEEDED,
                prompt="a cat",
                hold_id=hold.hold_id,
                provider_cost_micro_usd=30_000,
            )
        )
        session.add(ImageGeneration(user_id=BOB.id, status=JobStatus.RUNNING, prompt="a dog"))
        session.add(ImageGeneration(user_id=BOB.id, status=JobStatus.FAILED, prompt="a cow"))

    panel = await say(telegram, ADMIN, "/admin")
    assert "Admin panel" in panel.params["text"]
    assert ("📊 Statistics", "adm:stats") in buttons(panel)
    press(telegram, ADMIN, "adm:stats", panel)
    stats = await telegram.wait_for_call("sendMessage", lambda c: "Statistics" in c.params["text"])
    text = stats.params["text"]
    assert "Users: 3, active today: 3, this week: 3, blocked: 0" in text
    assert "Credits topped up: 150" in text
    assert "Credits spent: 11" in text  # 8 captured + 3 charged
    # 8 credits at $0.01 = $0.08 against $0.03 of provider cost.
    assert "<b>Images</b>: done 1, in progress 1, failed 1" in text
    assert "credits captured 8, provider cost $0.03, margin $0.05" in text


async def test_grant_and_take_move_the_balance_once_with_a_ledger_entry(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    await say(telegram, ADMIN, "/start")
    grant = telegram.message_update(ADMIN, "/grant @alice 50 sorry for the outage")
    telegram.queue_update(grant)
    telegram.queue_update(grant)  # the same update delivered again
    done = await telegram.wait_for_call("sendMessage", lambda c: "Added" in c.params["text"])
    assert done.params["text"] == "Added 50 credits to 5001. Balance: <b>50</b>."
    await _settle(telegram, ADMIN)
    assert await _balance(app, ALICE.id) == 50
    assert len([t for t in _texts_to(telegram, ADMIN.id) if "Added" in t]) == 1
    async with db.sessions() as session:
        entry = (
            await session.scalars(select(CreditEntry).where(CreditEntry.kind == EntryKind.ADJUSTMENT))
        ).one()
    assert (entry.amount, entry.description_args) == (50, {"reason": "sorry for the outage"})

    refused = await say(telegram, ADMIN, "/take 5001 80 chargeback")
    assert refused.params["text"] == "Not taken: the balance of 5001 is 50, less than 80."
    taken = await say(telegram, ADMIN, "/take 5001 20 chargeback")
    assert taken.params["text"] == "Took 20 credits from 5001. Balance: <b>30</b>."
    no_reason = await say(telegram, ADMIN, "/grant 5001 5")
    assert no_reason.params["text"] == "Give a reason after the amount."
    assert await _balance(app, ALICE.id) == 30

    history = await say(telegram, ALICE, "/balance")
    assert "Operator: sorry for the outage" in history.params["text"]

    card = await say(telegram, ADMIN, "/admin_user 5001")
    assert "Balance: <b>30</b>" in card.params["text"] and "Status: active" in card.params["text"]


async def test_blocked_user_gets_one_message_and_nothing_else_until_unblocked(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, BOB, "/start")
    card = await say(telegram, ADMIN, "/admin_user 5002")
    assert ("🚫 Block", "admu:block:5002") in buttons(card)
    press(telegram, ADMIN, "admu:block:5002", card)
    edited = await telegram.wait_for_call("editMessageText")
    assert "Status: blocked" in edited.params["text"]
    assert ("✅ Unblock", "admu:unblock:5002") in [
        (b["text"], b["callback_data"])
        for row in edited.params["reply_markup"]["inline_keyboard"]
        for b in row
    ]
    await eventually(lambda: _blocked(db, BOB.id, True))

    telegram.clear_calls()
    updates = [telegram.message_update(BOB, text) for text in ("/balance", "hello", "/start")]
    for sent in updates:
        telegram.queue_update(sent)
    notice = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == BOB.id)
    assert notice.params["text"] == "Ваш аккаунт заблокирован. Бот не будет отвечать на ваши сообщения."
    await telegram.wait_until_handled(*updates)
    assert len(_texts_to(telegram, BOB.id)) == 1
    assert [c for c in telegram.calls if c.params.get("chat_id") == BOB.id] == [notice]

    assert (await say(telegram, ADMIN, "/unblock 5002")).params["text"] == "User 5002 is unblocked."
    balance = await say(telegram, BOB, "/balance")
    assert "Баланс" in balance.params["text"]

    refused = await say(telegram, ADMIN, f"/block {ADMIN.id}")
    assert refused.params["text"] == "An admin can't be blocked."


async def _blocked(db: Database, user_id: int, expected: bool) -> bool:
    async with db.sessions() as session:
        return await session.scalar(select(User.is_blocked).where(User.telegram_id == user_id)) is expected


async def _register(runtime: Runtime, ids: list[int]) -> None:
    async with unit_of_work(runtime.services.sessions) as session:
        for user_id in ids:
            session.add(User(telegram_id=user_id, first_name="U", language="en"))


def _received(telegram: FakeTelegramServer, text: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for call in telegram.calls_of("sendMessage"):
        if call.params["text"] == text:
            counts[call.params["chat_id"]] = counts.get(call.params["chat_id"], 0) + 1
    return counts


async def test_broadcast_reaches_every_non_blocked_user_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ADMIN, "/start")
    ids = list(range(7001, 7011))
    await _register(app, ids)
    async with unit_of_work(app.services.sessions) as session:
        await session.execute(update(User).where(User.telegram_id == 7005).values(is_blocked=True))

    queued = await say(telegram, ADMIN, "/broadcast Big news")
    assert queued.params["text"].startswith("Broadcast queued")
    expected = {i: 1 for i in ids if i != 7005} | {ADMIN.id: 1}
    await eventually(lambda: _async(_received(telegram, "Big news") == expected))
    await eventually(lambda: _broadcast_status(db, BroadcastStatus.DONE))
    async with db.sessions() as session:
        row = (await session.scalars(select(Broadcast))).one()
    assert (row.sent_count, row.failed_count, row.locked_until) == (10, 0, None)
    handled = await app.services.recovery.run_once()  # a done broadcast is never sent again
    assert handled["admin.broadcasts"] == 0
    await jobs_done(app)
    assert _received(telegram, "Big news") == expected


async def _broadcast_status(db: Database, status: BroadcastStatus) -> bool:
    async with db.sessions() as session:
        return await session.scalar(select(Broadcast.status)) is status


async def test_broadcast_can_be_stopped(
    telegram: FakeTelegramServer,
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    db: Database,
) -> None:
    app: Runtime = await start_app(make_settings(admin_ids=str(ADMIN.id), broadcast_rate=4))
    await say(telegram, ADMIN, "/start")
    await _register(app, list(range(7001, 7041)))
    await say(telegram, ADMIN, "/broadcast Stop me")
    await eventually(lambda: _async(len(_received(telegram, "Stop me")) >= 2))
    telegram.queue_update(telegram.message_update(ADMIN, "/admin"))
    panel = await telegram.wait_for_call("sendMessage", lambda c: "Admin panel" in c.params["text"])
    press(telegram, ADMIN, "adm:stop", panel)
    stopped = await telegram.wait_for_call("sendMessage", lambda c: "Stopped" in c.params["text"])
    assert stopped.params["text"] == "Stopped 1 broadcast."
    await jobs_done(app)  # the job sees the stop before its next message and ends
    reached = _received(telegram, "Stop me")
    handled = await app.services.recovery.run_once()  # and nothing drives a stopped one again
    assert handled["admin.broadcasts"] == 0
    await jobs_done(app)
    assert _received(telegram, "Stop me") == reached
    assert 2 <= len(reached) < 20
    assert set(reached.values()) == {1}
    assert await _broadcast_status(db, BroadcastStatus.STOPPED)
    assert (await say(telegram, ADMIN, "/broadcast_stop")).params["text"] == "Stopped 0 broadcasts."


async def test_broadcast_resumes_after_a_restart_without_sending_twice(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    ids = list(range(7001, 7013))
    await _register(app, ids)
    # A process sent to the first five and died holding its lease: the lease has run out.
    broadcast_id = uuid.uuid4()
    async with unit_of_work(app.services.sessions) as session:
        session.add(
            Broadcast(
                id=broadcast_id,
                text="Resumed",
                created_by=ADMIN.id,
                status=BroadcastStatus.RUNNING,
                last_user_id=7005,
                sent_count=5,
                failed_count=0,
                locked_until=None,
            )
        )
    # Two processes come up and both re-drive it, twice over: only one job may send.
    # (The runtime's own sweep may already have picked it up: the lease decides who sends.)
    await asyncio.gather(
        app.services.recovery.run_once(),
        app.services.admin.run_broadcast(broadcast_id=broadcast_id),
        app.services.admin.run_broadcast(broadcast_id=broadcast_id),
    )
    await eventually(lambda: _broadcast_status(db, BroadcastStatus.DONE))
    await app.services.admin.run_broadcast(broadcast_id=broadcast_id)
    await jobs_done(app)
    assert _received(telegram, "Resumed") == {i: 1 for i in ids if i > 7005}
    async with db.sessions() as session:
        row = await session.get(Broadcast, broadcast_id)
        assert row is not None and row.sent_count == 12


# --- the card's grant/take flow -----------------------------------------------------------------


async def _open_flow(telegram: FakeTelegramServer, action: str, user_id: int) -> Any:
    """The admin opens the user's card and presses Grant or Take; returns the amount question."""
    card = await say(telegram, ADMIN, f"/admin_user {user_id}")
    press(telegram, ADMIN, f"admu:{action}:{user_id}", card)
    return await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == ADMIN.id)


async def _confirmation(telegram: FakeTelegramServer, action: str, amount: str, reason: str) -> Any:
    await _open_flow(telegram, action, ALICE.id)
    asked = await say(telegram, ADMIN, amount)
    assert asked.params["text"].startswith("Why?")
    return await say(telegram, ADMIN, reason)


def _confirm_data(confirmation: Any) -> str:
    data = [d for text, d in buttons(confirmation) if text == "✅ Confirm"]
    assert len(data) == 1 and data[0].startswith("admc:confirm:")
    return data[0]


async def _adjustments(db: Database) -> list[CreditEntry]:
    async with db.sessions() as session:
        return list(
            await session.scalars(select(CreditEntry).where(CreditEntry.kind == EntryKind.ADJUSTMENT))
        )


async def test_grant_through_the_card_asks_amount_and_reason_then_confirms(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    asked = await _open_flow(telegram, "grant", ALICE.id)
    assert asked.params["text"].startswith(
        "How many credits to grant to Alice (<code>5001</code>)? The balance is 0."
    )
    assert (await say(telegram, ADMIN, "500")).params["text"].startswith("Why?")
    confirmation = await say(telegram, ADMIN, "  sorry for the   outage ")
    assert confirmation.params["text"] == (
        "Grant 500 credits to Alice (<code>5001</code>)?\nReason: sorry for the outage"
    )
    assert [text for text, _ in buttons(confirmation)] == ["✅ Confirm", "✖️ Cancel"]
    assert await _balance(app, ALICE.id) == 0  # nothing happens before the confirmation

    press(telegram, ADMIN, _confirm_data(confirmation), confirmation)
    card = await telegram.wait_for_call("editMessageText")
    assert card.params["message_id"] == confirmation.result["message_id"]
    assert card.params["text"].startswith("Added 500 credits to 5001. Balance: <b>500</b>.\n\n<b>User</b>")
    assert "Balance: <b>500</b> (reserved 0)" in card.params["text"]
    assert ("➕ Grant", "admu:grant:5001") in buttons(card)
    await eventually(lambda: _balance_is(app, ALICE.id, 500))
    [entry] = await _adjustments(db)
    assert (entry.user_id, entry.amount, entry.balance_after) == (ALICE.id, 500, 500)
    assert (entry.description_args, entry.reference) == ({"reason": "sorry for the outage"}, "admin:900")
    assert "Operator: sorry for the outage" in (await say(telegram, ALICE, "/balance")).params["text"]
    # The flow is over: a number now is not an amount any more.
    assert await app.dispatcher.fsm.get_context(app.bot, ADMIN.id, ADMIN.id).get_state() is None

    # Russian plural forms of the confirmation, by the amount.
    ru = app.services.translator.bind("ru")
    assert [
        ru("admin.credits.confirm_grant", count=n, user="A", reason="r").split(" пользователю")[0]
        for n in (1, 3, 5)
    ] == ["Начислить 1 кредит", "Начислить 3 кредита", "Начислить 5 кредитов"]


async def _balance_is(runtime: Runtime, user_id: int, expected: int) -> bool:
    return await _balance(runtime, user_id) == expected


async def test_take_through_the_card_is_refused_above_the_balance(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.credit(session=session, user_id=ALICE.id, amount=50, key="t1")
    asked = await _open_flow(telegram, "take", ALICE.id)
    assert "The balance is 50." in asked.params["text"]

    refused = await say(telegram, ADMIN, "80")
    assert refused.params["text"].startswith(
        "Not taken: the balance of 5001 is 50, less than 80.\nHow many credits to take from Alice"
    )
    assert (await say(telegram, ADMIN, "30")).params["text"].startswith("Why?")
    confirmation = await say(telegram, ADMIN, "chargeback")
    assert confirmation.params["text"].startswith("Take 30 credits from Alice (<code>5001</code>)?")

    # The balance goes down before the confirmation: the ledger refuses, nothing changes.
    async with unit_of_work(app.services.sessions) as session:
        await app.services.ledger.charge(session=session, user_id=ALICE.id, amount=40, key="c1")
    press(telegram, ADMIN, _confirm_data(confirmation), confirmation)
    card = await telegram.wait_for_call("editMessageText")
    assert card.params["text"].startswith("Not taken: the balance of 5001 is 10, less than 30.")
    assert "Balance: <b>10</b>" in card.params["text"]
    await _settle(telegram, ADMIN)
    assert await _balance(app, ALICE.id) == 10
    assert await _adjustments(db) == []


async def test_bad_amounts_and_reasons_are_asked_again_and_cancel_changes_nothing(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    await _open_flow(telegram, "grant", ALICE.id)
    for text in ("abc", "0", "-5", "1e9", "12.5", "1000001"):
        again = await say(telegram, ADMIN, text)
        error = (
            "That is too many: at most 1000000 at a time."
            if text == "1000001"
            else "The amount must be a whole number above zero."
        )
        assert again.params["text"].startswith(error + "\nHow many credits to grant to Alice"), text
    assert (await say(telegram, ADMIN, "1000000")).params["text"].startswith("Why?")
    too_long = await say(telegram, ADMIN, "x" * 201)
    assert too_long.params["text"].startswith("The reason is too long: at most 200 characters.\nWhy?")
    confirmation = await say(telegram, ADMIN, "x" * 200)
    assert confirmation.params["text"].startswith("Grant 1000000 credits to Alice")

    # Cancel under the confirmation: the card comes back unchanged, the button is dead after.
    cancel = next(d for text, d in buttons(confirmation) if text == "✖️ Cancel")
    press(telegram, ADMIN, cancel, confirmation)
    edited = await telegram.wait_for_call("editMessageText")
    assert edited.params["text"].startswith("Cancelled: nothing changed.\n\n<b>User</b>")
    assert "Balance: <b>0</b>" in edited.params["text"]
    press(telegram, ADMIN, _confirm_data(confirmation), confirmation)
    dead = await telegram.wait_for_call("answerCallbackQuery", lambda c: bool(c.params.get("text")))
    assert dead.params["text"] == "This confirmation is no longer valid: nothing changed."

    # /cancel mid-way ends the flow too.
    await _open_flow(telegram, "grant", ALICE.id)
    await say(telegram, ADMIN, "25")
    assert (await say(telegram, ADMIN, "/cancel")).params["text"] == "Cancelled: nothing changed."
    await _settle(telegram, ADMIN)  # the answer came before the commit: wait for the next update
    assert await app.dispatcher.fsm.get_context(app.bot, ADMIN.id, ADMIN.id).get_state() is None
    assert await _balance(app, ALICE.id) == 0
    assert await _adjustments(db) == []


async def test_confirm_pressed_twice_grants_once(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    confirmation = await _confirmation(telegram, "grant", "70", "contest prize")
    data = _confirm_data(confirmation)
    telegram.clear_calls()
    press(telegram, ADMIN, data, confirmation)
    press(telegram, ADMIN, data, confirmation)  # a second press, a new update, at the same time
    await telegram.wait_for_call("editMessageText")
    await eventually(lambda: _async(len(telegram.calls_of("answerCallbackQuery")) == 2))
    press(telegram, ADMIN, data, confirmation)  # and once more, later
    await eventually(lambda: _async(len(telegram.calls_of("answerCallbackQuery")) == 3))
    await _settle(telegram, ADMIN)
    assert await _balance(app, ALICE.id) == 70
    assert [(e.amount, e.description_args) for e in await _adjustments(db)] == [
        (70, {"reason": "contest prize"})
    ]
    edits = [c.params["text"] for c in telegram.calls_of("editMessageText")]
    assert edits and all(t.startswith("Added 70 credits to 5001. Balance: <b>70</b>.") for t in edits)
    answers = [a.params.get("text") for a in telegram.calls_of("answerCallbackQuery")]
    assert answers[-1] == "This confirmation is no longer valid: nothing changed."


async def test_credits_moved_by_hand_stay_moved_when_the_reply_fails(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    await say(telegram, ALICE, "/start")
    # The admin blocked the bot: the /grant reply gets a 403, the grant stands.
    telegram.fail_nth("sendMessage", Fault.FORBIDDEN)
    telegram.queue_update(telegram.message_update(ADMIN, "/grant 5001 40 outage"))
    failed = await telegram.wait_for_call("sendMessage", lambda c: c.params.get("chat_id") == ADMIN.id)
    assert failed.failed and failed.params["text"] == "Added 40 credits to 5001. Balance: <b>40</b>."
    await eventually(lambda: _balance_is(app, ALICE.id, 40))

    # The card's confirmation: Telegram fails the answer to the button, the grant stands.
    confirmation = await _confirmation(telegram, "grant", "60", "contest prize")
    telegram.fail_nth("answerCallbackQuery", Fault.SERVER_ERROR)
    press(telegram, ADMIN, _confirm_data(confirmation), confirmation)
    await telegram.wait_for_call("answerCallbackQuery", lambda c: c.failed)
    await eventually(lambda: _balance_is(app, ALICE.id, 100))
    await _settle(telegram, ADMIN)
    assert [(e.amount, e.description_args) for e in await _adjustments(db)] == [
        (40, {"reason": "outage"}),
        (60, {"reason": "contest prize"}),
    ]
    async with app.services.sessions() as session:
        assert await app.services.ledger.verify_all(session=session) == []


async def test_answers_sent_at_once_are_each_read_in_the_step_before_them_saved(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    """The amount and the reason arrive together (a fast typist, a client resending): the reason
    must be read in the state the amount's step saved, not in the one before it."""
    await say(telegram, ALICE, "/start")
    await _open_flow(telegram, "grant", ALICE.id)
    telegram.queue_update(telegram.message_update(ADMIN, "70"))
    telegram.queue_update(telegram.message_update(ADMIN, "contest prize"))
    confirmation = await telegram.wait_for_call(
        "sendMessage", lambda c: c.params.get("chat_id") == ADMIN.id and c.params["text"].startswith("Grant")
    )
    assert _confirm_data(confirmation)
    texts = _texts_to(telegram, ADMIN.id)
    assert not any(t.startswith("The amount must be") for t in texts)


async def test_non_admin_reaches_no_step_of_the_credits_flow(
    telegram: FakeTelegramServer, app: Runtime, db: Database
) -> None:
    start = await say(telegram, ALICE, "/start")
    telegram.clear_calls()
    for data in ("admu:grant:5001", "admu:take:5001", "admc:confirm:" + "0" * 32, "admc:cancel:x"):
        press(telegram, ALICE, data, start)
    await eventually(lambda: _async(len(telegram.calls_of("answerCallbackQuery")) == 4))
    alice = app.dispatcher.fsm.get_context(app.bot, ALICE.id, ALICE.id)
    assert await alice.get_state() is None  # pressing Grant started nothing

    # Somehow in the last step with a complete draft (say, removed from ADMIN_IDS meanwhile):
    # neither the Confirm button nor an amount typed does anything.
    op = "ab" * 16
    await alice.set_state("CreditsFlow:confirm")
    await alice.set_data({"user_id": ALICE.id, "take": False, "amount": 500, "reason": "x", "op": op})
    press(telegram, ALICE, f"admc:confirm:{op}", start)
    await eventually(lambda: _async(len(telegram.calls_of("answerCallbackQuery")) == 5))
    await alice.set_state("CreditsFlow:amount")
    telegram.queue_update(telegram.message_update(ALICE, "500"))
    await _settle(telegram, ALICE)

    answers = [a.params.get("text") for a in telegram.calls_of("answerCallbackQuery")]
    assert answers == ["This button is not valid any more."] * 5
    texts = _texts_to(telegram, ALICE.id)
    assert not any(t.startswith(("How many", "Why?", "Grant", "Added")) or "Balance:" in t for t in texts)
    assert "I didn't understand that. Choose an action from the menu below." in texts  # the "500"
    assert telegram.calls_of("editMessageText") == []
    assert await _balance(app, ALICE.id) == 0
    assert await _adjustments(db) == []
