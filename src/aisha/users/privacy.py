"""/delete_me: erase what a user gave us and what we made for them.

In one transaction: the user's active holds are released, their ledger is folded into
anonymized per-kind totals (no user id) and deleted, and their photos, avatars, generated
images, transcripts and payments are deleted. The users row stays, scrubbed to the bare
Telegram id and interface language: without it the next message would register the user anew
and grant the welcome bonus again, and a block would be lifted by deleting oneself. After the
commit every storage prefix of the user is deleted (`avatars/<id>/`, `loras/<id>/`,
`generations/<id>/`, `transcripts/<id>/`); a failure there is retried by the next /delete_me, which deletes by prefix
and needs no rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import structlog
from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aisha.avatars.models import Avatar
from aisha.billing.models import (
    AnonymizedLedgerTotal,
    CreditAccount,
    CreditEntry,
    CreditHold,
    EntryKind,
    Payment,
)
from aisha.billing.service import LedgerService
from aisha.clock import Clock
from aisha.db.session import after_commit
from aisha.db.upsert import insert_ignore
from aisha.generation.models import ImageGeneration
from aisha.notices.models import OwedMessage
from aisha.storage import ObjectStorage
from aisha.transcription.models import Transcript
from aisha.users.models import User

log = structlog.get_logger(__name__)
STORAGE_ROOTS = ("avatars", "loras", "generations", "transcripts")


def user_prefixes(user_id: int) -> list[str]:
    """Every storage folder that holds files of the user."""
    return [f"{root}/{user_id}/" for root in STORAGE_ROOTS]


@dataclass(frozen=True)
class DeletionReport:
    holds_released: int
    avatars: int
    generations: int
    transcripts: int
    payments: int
    ledger_entries: int
    forfeited_balance: int


class PrivacyService:
    def __init__(self, *, clock: Clock, ledger: LedgerService, storage: ObjectStorage) -> None:
        self._clock = clock
        self._ledger = ledger
        self._storage = storage

    async def delete_user_data(self, *, session: AsyncSession, user_id: int) -> DeletionReport:
        """Delete everything of the user inside the caller's transaction; files after it commits."""
        holds = await self._ledger.active_holds(session=session, user_id=user_id)
        for hold in holds:
            await self._ledger.release(session=session, hold_id=hold.id, key=f"privacy:{hold.id}:release")
        forfeited = await self._ledger.get_balance(session=session, user_id=user_id)
        entries = await self._anonymize_ledger(session, user_id)

        counts = {}
        for name, model in (
            ("generations", ImageGeneration),
            ("transcripts", Transcript),
            ("avatars", Avatar),  # after generations, which point at avatars
            ("payments", Payment),
        ):
            result = await session.execute(delete(model).where(model.user_id == user_id))
            counts[name] = int(result.rowcount)  # type: ignore[attr-defined]
        await session.execute(delete(CreditHold).where(CreditHold.user_id == user_id))
        # Messages owed to the user quote their balance and payments: gone with the rest.
        await session.execute(delete(OwedMessage).where(OwedMessage.chat_id == user_id))
        # The account stays, at 0: it equals the sum of its (now no) entries.
        await session.execute(update(CreditAccount).where(CreditAccount.user_id == user_id).values(balance=0))
        await session.execute(
            update(User)
            .where(User.telegram_id == user_id)
            .values(
                username=None,
                first_name=None,
                last_name=None,
                telegram_language_code=None,
                transcription_language=None,
            )
        )

        async def delete_files() -> None:
            await self.delete_files(user_id=user_id)

        after_commit(session, delete_files)
        report = DeletionReport(
            holds_released=len(holds),
            avatars=counts["avatars"],
            generations=counts["generations"],
            transcripts=counts["transcripts"],
            payments=counts["payments"],
            ledger_entries=entries,
            forfeited_balance=forfeited,
        )
        log.info("privacy.user_deleted", user_id=user_id, **report.__dict__)
        return report

    async def delete_files(self, *, user_id: int) -> int:
        deleted = 0
        for prefix in user_prefixes(user_id):
            deleted += await self._storage.delete_prefix(prefix)
        return deleted

    async def _anonymize_ledger(self, session: AsyncSession, user_id: int) -> int:
        rows = (
            await session.execute(
                select(CreditEntry.kind, func.count(), func.coalesce(func.sum(CreditEntry.amount), 0))
                .where(CreditEntry.user_id == user_id)
                .group_by(CreditEntry.kind)
            )
        ).all()
        now = self._clock.now()
        table = cast(Table, AnonymizedLedgerTotal.__table__)
        total = 0
        for kind, entries, amount in rows:
            await insert_ignore(
                session,
                table,
                {"kind": EntryKind(kind), "entries": 0, "amount": 0, "users": 0, "updated_at": now},
                conflict_columns=["kind"],
            )
            await session.execute(
                update(AnonymizedLedgerTotal)
                .where(AnonymizedLedgerTotal.kind == kind)
                .values(
                    entries=AnonymizedLedgerTotal.entries + int(entries),
                    amount=AnonymizedLedgerTotal.amount + int(amount),
                    users=AnonymizedLedgerTotal.users + 1,
                    updated_at=now,
                )
            )
            total += int(entries)
        await session.execute(delete(CreditEntry).where(CreditEntry.user_id == user_id))
        return total
