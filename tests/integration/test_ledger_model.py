"""Random operation sequences against the real ledger, checked after every step against a model.

Hypothesis drives a RuleBasedStateMachine; each example gets a fresh database (a copy of the
migrated SQLite file, or an emptied PostgreSQL database) and its own event loop, and every step
is one committed unit of work. The model is a few dictionaries: balances, holds, done operations.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from aisha.billing import (
    EntryKind,
    HoldAlreadyResolved,
    HoldStatus,
    IdempotencyConflict,
    InsufficientCredits,
    LedgerService,
)
from aisha.billing.models import CreditEntry, CreditHold
from aisha.clock import FrozenClock
from aisha.db.session import create_engine, create_session_factory, unit_of_work
from aisha.models import Base
from aisha.users.models import User

T = TypeVar("T")
TTL = timedelta(minutes=30)
USERS = (11, 12)
Op = Callable[[AsyncSession], Awaitable[Any]]


@dataclass
class ModelHold:
    user_id: int
    amount: int
    expires_at: datetime
    status: HoldStatus = HoldStatus.ACTIVE
    captured: int = 0


@dataclass
class Done:
    """An operation that was applied: how to run it again, and how to run a conflicting variant."""

    again: Op
    first: Any
    conflicting: Op | None


class Rollback(Exception):
    pass


def machine_for(new_database: Callable[[], str], truncate: bool) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.engine: AsyncEngine = create_engine(new_database())
            self.sessions = create_session_factory(self.engine)
            self.clock = FrozenClock()
            self.ledger = LedgerService(clock=self.clock, hold_ttl=TTL)
            self.keys = count()
            self.balance = dict.fromkeys(USERS, 0)
            self.model_holds: dict[uuid.UUID, ModelHold] = {}
            self.done: list[Done] = []
            self.entries = 0

            async def setup(session: AsyncSession) -> None:
                if truncate:
                    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
                    await session.execute(text(f"TRUNCATE {names} CASCADE"))
                session.add_all(User(telegram_id=u, language="en") for u in USERS)

            self.run(setup)

        def teardown(self) -> None:
            self.loop.run_until_complete(self.engine.dispose())
            self.loop.close()

        def run(self, work: Op) -> Any:
            async def once() -> Any:
                async with unit_of_work(self.sessions) as session:
                    return await work(session)

            return self.loop.run_until_complete(once())

        def key(self) -> str:
            return f"op:{next(self.keys)}"

        def apply(self, op: Op, conflicting: Op | None) -> Any:
            result = self.run(op)
            assert result.replayed is False
            self.done.append(Done(again=op, first=result, conflicting=conflicting))
            self.entries += 1
            return result

        def expect_refusal(self, op: Op, user_id: int, amount: int) -> None:
            with pytest.raises(InsufficientCredits) as error:
                self.run(op)
            assert (error.value.balance, error.value.required) == (self.balance[user_id], amount)
            assert error.value.shortfall == amount - self.balance[user_id]

        # --- operations ------------------------------------------------------------------------

        @initialize(amounts=st.tuples(st.integers(0, 150), st.integers(0, 150)))
        def opening_balances(self, amounts: tuple[int, int]) -> None:
            # Hypothesis disables random subsets of rules per example (swarm testing): start with
            # credits so holds and charges have something to work on even without `credit`.
            for user, amount in zip(USERS, amounts, strict=True):
                if amount:
                    self.credit(user, amount, EntryKind.TOPUP)

        @rule(
            user=st.sampled_from(USERS),
            amount=st.integers(1, 60),
            kind=st.sampled_from([EntryKind.TOPUP, EntryKind.BONUS, EntryKind.REFUND, EntryKind.ADJUSTMENT]),
        )
        def credit(self, user: int, amount: int, kind: EntryKind) -> None:
            ledger, k = self.ledger, self.key()

            def op(s: AsyncSession, a: int = amount) -> Awaitable[Any]:
                return ledger.credit(session=s, user_id=user, amount=a, key=k, kind=kind)

            result = self.apply(op, lambda s: op(s, amount + 1))
            self.balance[user] += amount
            assert (result.balance, result.amount) == (self.balance[user], amount)

        @rule(user=st.sampled_from(USERS), amount=st.integers(1, 60))
        def charge(self, user: int, amount: int) -> None:
            ledger, k = self.ledger, self.key()

            def op(s: AsyncSession, a: int = amount) -> Awaitable[Any]:
                return ledger.charge(session=s, user_id=user, amount=a, key=k)

            if amount > self.balance[user]:
                self.expect_refusal(op, user, amount)
                return
            result = self.apply(op, lambda s: op(s, amount + 1))
            self.balance[user] -= amount
            assert (result.balance, result.amount) == (self.balance[user], -amount)

        @rule(target=holds, user=st.sampled_from(USERS), amount=st.integers(1, 60))
        def hold(self, user: int, amount: int) -> Any:
            ledger, k = self.ledger, self.key()

            def op(s: AsyncSession, a: int = amount, u: int = user) -> Awaitable[Any]:
                return ledger.hold(session=s, user_id=u, amount=a, key=k, reference=f"job:{k}")

            if amount > self.balance[user]:
                self.expect_refusal(op, user, amount)
                return multiple()
            other_user = USERS[1 - USERS.index(user)]
            result = self.apply(op, lambda s: op(s, u=other_user))
            self.balance[user] -= amount
            self.model_holds[result.hold_id] = ModelHold(user, amount, self.clock.now() + TTL)
            assert (result.balance, result.amount) == (self.balance[user], amount)
            return result.hold_id

        @rule(hold_id=holds, share=st.floats(0, 1))
        def capture(self, hold_id: uuid.UUID, share: float) -> None:
            model = self.model_holds[hold_id]
            spend = round(model.amount * share)
            ledger, k = self.ledger, self.key()

            def op(s: AsyncSession, a: int = spend) -> Awaitable[Any]:
                return ledger.capture(session=s, hold_id=hold_id, amount=a, key=k)

            self.resolve(hold_id, op, lambda s: op(s, (spend + 1) % (model.amount + 1)), spend)

        @rule(hold_id=consumes(holds))
        def release(self, hold_id: uuid.UUID) -> None:
            ledger, k = self.ledger, self.key()

            def op(s: AsyncSession) -> Awaitable[Any]:
                return ledger.release(session=s, hold_id=hold_id, key=k)

            def as_capture(s: AsyncSession) -> Awaitable[Any]:
                return ledger.capture(session=s, hold_id=hold_id, amount=0, key=k)

            self.resolve(hold_id, op, as_capture, None)

        def resolve(self, hold_id: uuid.UUID, op: Op, conflicting: Op, spend: int | None) -> None:
            model = self.model_holds[hold_id]
            if model.status is not HoldStatus.ACTIVE:
                with pytest.raises(HoldAlreadyResolved) as error:
                    self.run(op)
                assert error.value.status is model.status
                return
            result = self.apply(op, conflicting)
            model.status = HoldStatus.RELEASED if spend is None else HoldStatus.CAPTURED
            model.captured = spend or 0
            self.balance[model.user_id] += model.amount - model.captured
            assert (result.status, result.captured, result.returned) == (
                model.status,
                model.captured,
                model.amount - model.captured,
            )
            assert result.balance == self.balance[model.user_id]

        # Steps that add up to exactly the TTL often, so the expiry boundary itself gets tested.
        @rule(minutes=st.sampled_from([0, 1, 5, 10, 15, 29, 30, 31]))
        def time_passes(self, minutes: int) -> None:
            self.clock.advance(timedelta(minutes=minutes))

        @rule(
            hold_id=holds,
            move=st.sampled_from(["stay", "to_its_expiry", "just_before_it"]),
            limit=st.sampled_from([1, 3, 100]),
        )
        def expiry_sweep(self, hold_id: uuid.UUID, move: str, limit: int) -> None:
            # Random steps rarely land on expires_at itself: aim at one hold's boundary on purpose.
            model = self.model_holds[hold_id]
            if move != "stay" and model.status is HoldStatus.ACTIVE and model.expires_at > self.clock.now():
                target = model.expires_at - (
                    timedelta(microseconds=1) if move == "just_before_it" else timedelta(0)
                )
                self.clock.advance(target - self.clock.now())
            swept = self.run(lambda s: self.ledger.expire_holds(session=s, limit=limit))
            due = {
                hold_id
                for hold_id, model in self.model_holds.items()
                if model.status is HoldStatus.ACTIVE and model.expires_at <= self.clock.now()
            }
            assert len(swept) == min(limit, len(due))
            for result in swept:
                assert result.hold_id in due
                model = self.model_holds[result.hold_id]
                model.status = HoldStatus.EXPIRED
                self.balance[model.user_id] += model.amount
                self.entries += 1

        @rule(data=st.data(), conflicting=st.booleans())
        def reuse_an_earlier_key(self, data: st.DataObject, conflicting: bool) -> None:
            """The same operation again returns the first result; another one is a conflict."""
            candidates = [d for d in self.done if d.conflicting is not None or not conflicting]
            if not candidates:
                return
            done = data.draw(st.sampled_from(candidates))
            if conflicting:
                assert done.conflicting is not None
                with pytest.raises(IdempotencyConflict):
                    self.run(done.conflicting)
                return
            again = self.run(done.again)
            assert again.replayed is True
            first = done.first
            for name in ("entry_id", "hold_id", "balance", "amount", "captured", "returned", "status"):
                assert getattr(again, name, None) == getattr(first, name, None), name

        @rule(user=st.sampled_from(USERS), amount=st.integers(1, 30))
        def failed_unit_of_work_leaves_nothing(self, user: int, amount: int) -> None:
            async def work(session: AsyncSession) -> None:
                await self.ledger.credit(session=session, user_id=user, amount=amount, key=self.key())
                await self.ledger.hold(
                    session=session, user_id=user, amount=amount, key=self.key(), reference="x"
                )
                raise Rollback

            with pytest.raises(Rollback):
                self.run(work)

        # --- what must hold after every step ---------------------------------------------------

        @invariant()
        def books_match_the_model(self) -> None:
            async def read(
                session: AsyncSession,
            ) -> tuple[dict[int, int], dict[uuid.UUID, Any], int, list[Any]]:
                balances = {u: await self.ledger.get_balance(session=session, user_id=u) for u in USERS}
                rows = await session.execute(
                    select(CreditHold.id, CreditHold.status, CreditHold.captured_amount)
                )
                holds = {row.id: (row.status, row.captured_amount) for row in rows}
                entries = await session.scalar(select(func.count()).select_from(CreditEntry))
                return balances, holds, int(entries or 0), await self.ledger.verify_all(session=session)

            balances, holds, entries, problems = self.run(read)
            assert balances == self.balance
            assert holds == {h: (m.status, m.captured) for h, m in self.model_holds.items()}
            assert entries == self.entries
            assert problems == []

    return LedgerMachine


@pytest.mark.parametrize(
    ("backend", "examples", "steps"),
    [("sqlite", 20, 40), pytest.param("postgres", 5, 40, marks=pytest.mark.postgres)],
)
def test_ledger_matches_the_model(
    backend: str, examples: int, steps: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    numbers = count()
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")

        def new_database() -> str:
            path = tmp_path / f"model-{next(numbers)}.db"
            shutil.copy(template, path)
            return f"sqlite+aiosqlite:///{path}"

        machine = machine_for(new_database, truncate=False)
    else:
        url: str = request.getfixturevalue("postgres_url")
        machine = machine_for(lambda: url, truncate=True)

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=False,
        ),
    )
