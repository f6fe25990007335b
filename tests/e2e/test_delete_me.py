"""/delete_me: after the user confirms, nothing of them remains in storage or in any table keyed
by them; the ledger keeps only anonymized per-kind totals; somebody else's press does nothing."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from aisha.avatars.models import Avatar, AvatarPhoto, AvatarStatus, AvatarType
from aisha.billing.models import (
    AnonymizedLedgerTotal,
    CreditAccount,
    CreditEntry,
    CreditHold,
    EntryKind,
    Payment,
)
from aisha.db.base import JobStatus
from aisha.db.session import unit_of_work
from aisha.generation.models import ImageGeneration
from aisha.notices import OwedMessage
from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from aisha.transcription.models import Transcript
from aisha.users.models import User
from tests.conftest import Database
from tests.e2e.conftest import count, eventually, press, say

ALICE = FakeUser(id=5101, first_name="Alice", last_name="Liddell", username="alice")
BOB = FakeUser(id=5102, first_name="Bob", username="bob")
BONUS = 100  # the welcome bonus in these tests


async def _seed(app: Runtime, user_id: int) -> None:
    """A payment, an active hold, an avatar with photos, a generation and a transcript, with files."""
    storage, ledger = app.services.storage, app.services.ledger
    avatar_id, generation_id, transcript_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = app.services.clock.now()
    base = f"transcripts/{user_id}/{transcript_id}"
    image_key = f"generations/{user_id}/{generation_id}/1.png"
    # Files first, rows after: no storage call while a transaction is open.
    for n in range(3):
        await storage.put(
            f"avatars/{user_id}/{avatar_id}/{n}.jpg", b"photo %d" % n, content_type="image/jpeg"
        )
    await storage.put(f"loras/{user_id}/{avatar_id}/lora.safetensors", b"weights")  # our copy
    await storage.put(image_key, b"png", content_type="image/png")
    await storage.put(f"{base}/audio.ogg", b"ogg")
    await storage.put(f"{base}/text.txt", b"my secret words")
    async with unit_of_work(app.services.sessions) as session:
        await ledger.credit(session=session, user_id=user_id, amount=500, key=f"topup:{user_id}")
        session.add(
            Payment(
                user_id=user_id,
                telegram_payment_charge_id=f"charge-{user_id}",
                currency="XTR",
                amount=250,
                credits=500,
                package_id="p500",
                payload=f"topup:{user_id}",
            )
        )
        # A thank-you still owed (its next attempt tomorrow): it quotes the user's balance.
        session.add(
            OwedMessage(
                key=f"thanks:{user_id}",
                chat_id=user_id,
                text="Thank you! 500 credits added.",
                next_attempt_at=now + timedelta(days=1),
            )
        )
        spent = await ledger.hold(
            session=session, user_id=user_id, amount=40, key=f"spent:{user_id}", reference="gen:x"
        )
        await ledger.capture(
            session=session, hold_id=spent.hold_id, amount=40, key=f"spent:{user_id}:capture"
        )
        held = await ledger.hold(
            session=session, user_id=user_id, amount=150, key=f"held:{user_id}", reference="avatar:x"
        )
        session.add(
            Avatar(
                id=avatar_id,
                user_id=user_id,
                type=AvatarType.PORTRAIT,
                status=AvatarStatus.TRAINING,
                name="Me",
                trigger_phrase=f"tok{user_id}",
                hold_id=held.hold_id,
                price=150,
            )
        )
        await session.flush()
        for n in range(3):
            key = f"avatars/{user_id}/{avatar_id}/{n}.jpg"
            session.add(
                AvatarPhoto(
                    avatar_id=avatar_id,
                    storage_key=key,
                    sha256=f"{n:064d}",
                    perceptual_hash="0" * 16,
                    size_bytes=7,
                    width=600,
                    height=600,
                )
            )
        session.add(
            ImageGeneration(
                id=generation_id,
                user_id=user_id,
                avatar_id=avatar_id,
                status=JobStatus.SUCCEEDED,
                prompt="me on the moon",
                results=[{"key": image_key, "seed": 1}],
                price=40,
                cost=40,
            )
        )
        session.add(
            Transcript(
                id=transcript_id,
                user_id=user_id,
                status=JobStatus.SUCCEEDED,
                source_kind="voice",
                audio_key=f"{base}/audio.ogg",
                text="my secret words",
                text_key=f"{base}/text.txt",
                finished_at=now - timedelta(minutes=1),
            )
        )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def _rows_of(db: Database, user_id: int) -> dict[str, int]:
    """Rows in every table keyed by the user (photos through their avatars)."""
    return {
        "avatars": await count(db, Avatar, Avatar.user_id == user_id),
        "photos": await count(
            db, AvatarPhoto, AvatarPhoto.avatar_id.in_(select(Avatar.id).where(Avatar.user_id == user_id))
        ),
        "generations": await count(db, ImageGeneration, ImageGeneration.user_id == user_id),
        "transcripts": await count(db, Transcript, Transcript.user_id == user_id),
        "payments": await count(db, Payment, Payment.user_id == user_id),
        "entries": await count(db, CreditEntry, CreditEntry.user_id == user_id),
        "holds": await count(db, CreditHold, CreditHold.user_id == user_id),
        "owed messages": await count(db, OwedMessage, OwedMessage.chat_id == user_id),
    }


async def test_delete_me_erases_the_user_and_keeps_anonymized_totals(
    make_settings: Callable[..., Any],
    start_app: Callable[..., Any],
    telegram: FakeTelegramServer,
    db: Database,
    tmp_path: Path,
) -> None:
    app: Runtime = await start_app(make_settings(welcome_bonus=BONUS))
    root = tmp_path / "files"
    for user in (ALICE, BOB):
        await say(telegram, user, "/start")
        await eventually(functools.partial(_registered, db, user.id))
        await _seed(app, user.id)
    bob_files = [f for f in _files(root) if f"/{BOB.id}/" in f]
    bob_rows = await _rows_of(db, BOB.id)
    assert len(bob_files) == 7 and all(bob_rows.values())

    asked = await say(telegram, ALICE, "/delete_me")
    # 100 bonus + 500 top-up - 40 spent - 150 held
    assert "410" in asked.params["text"]
    data = [b["callback_data"] for row in asked.params["reply_markup"]["inline_keyboard"] for b in row]
    confirm = next(d for d in data if "confirm" in d)

    # Bob presses Alice's confirm button (forged into his own chat): nothing happens.
    bobs = await say(telegram, BOB, "/delete_me")
    press(telegram, BOB, confirm, under=bobs)
    alert = await telegram.wait_for_call("answerCallbackQuery")
    assert alert.params.get("show_alert") is True
    assert await _rows_of(db, ALICE.id) == bob_rows
    assert len(_files(root)) == 14

    press(telegram, ALICE, confirm, under=asked)
    done = await telegram.wait_for_call("editMessageText", lambda c: c.params.get("chat_id") == ALICE.id)
    assert "deleted" in done.params["text"] or "удалены" in done.params["text"]

    async def alice_gone() -> bool:
        return not any((await _rows_of(db, ALICE.id)).values())

    await eventually(alice_gone)
    await eventually(lambda: _no_files_of(root, ALICE.id))
    assert _files(root) == sorted(bob_files)
    assert await _rows_of(db, BOB.id) == bob_rows

    async with db.sessions() as session:
        alice = await session.get(User, ALICE.id)
        assert alice is not None  # kept, scrubbed: no second welcome bonus, a block stays
        assert (alice.username, alice.first_name, alice.last_name) == (None, None, None)
        assert (
            await session.scalar(select(CreditAccount.balance).where(CreditAccount.user_id == ALICE.id)) == 0
        )
        totals = {
            row.kind: (row.entries, row.amount, row.users)
            for row in await session.scalars(select(AnonymizedLedgerTotal))
        }
    # Alice's ledger, folded by kind (her active hold was released first).
    assert totals == {
        EntryKind.BONUS: (1, BONUS, 1),
        EntryKind.TOPUP: (1, 500, 1),
        EntryKind.HOLD: (2, -190, 1),
        EntryKind.CAPTURE: (1, 0, 1),
        EntryKind.RELEASE: (1, 150, 1),
    }
    assert sum(amount for _, amount, _ in totals.values()) == 560  # what she had left, forfeited

    # Pressing confirm again deletes nothing more and counts nothing twice; the message already
    # says so, and is left alone (Telegram would refuse the same text: "message is not modified").
    edits = len(telegram.calls_of("editMessageText"))
    await telegram.wait_until_handled(press(telegram, ALICE, confirm, under=asked))
    assert len(telegram.calls_of("editMessageText")) == edits
    async with db.sessions() as session:
        again_totals = {
            row.kind: (row.entries, row.amount, row.users)
            for row in await session.scalars(select(AnonymizedLedgerTotal))
        }
    assert again_totals == totals

    # Alice comes back: a fresh start, no second welcome bonus.
    again = await say(telegram, ALICE, "/balance")
    assert again.params["chat_id"] == ALICE.id
    async with db.sessions() as session:
        assert await app.services.ledger.get_balance(session=session, user_id=ALICE.id) == 0


async def _registered(db: Database, user_id: int) -> bool:
    return await count(db, CreditAccount, CreditAccount.user_id == user_id) == 1


async def _no_files_of(root: Path, user_id: int) -> bool:
    return not [f for f in _files(root) if f"/{user_id}/" in f]
