"""The operator's side panel: the user's account and jobs (from the bot's database) and the calls
the bot made to each fake service, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from aisha.avatars.models import Avatar
from aisha.billing.service import DEFAULT_DESCRIPTIONS, HistoryItem
from aisha.billing.statement import Operation, statement
from aisha.container import Services
from aisha.generation.models import ImageGeneration
from aisha.i18n import Texts
from aisha.sandbox.fake_fal import FakeFalServer
from aisha.sandbox.fake_openai import FakeOpenAIServer
from aisha.sandbox.fake_telegram import FakeTelegramServer, RecordedCall, parse_html
from aisha.transcription.models import Transcript

JsonDict = dict[str, Any]

LEDGER_LIMIT = 50
JOBS_LIMIT = 50
CALLS_LIMIT = 100
_SUMMARY_CHARS = 100
# What says most about a Bot API call, in order of preference.
_SUMMARY_PARAMS = ("text", "caption", "title", "action", "url", "callback_query_id", "pre_checkout_query_id")


async def account(services: Services, *, user_id: int, t: Texts) -> JsonDict:
    """Balance, credits on hold, the newest operations (as the user's statement folds them) and
    ledger entries (raw, for the operator's toggle), and the user's jobs of every kind."""
    ledger = services.ledger
    async with services.sessions() as session:
        balance = await ledger.get_balance(session=session, user_id=user_id)
        on_hold = await ledger.held_total(session=session, user_id=user_id)
        page = await ledger.history(session=session, user_id=user_id, limit=LEDGER_LIMIT)
        operations = await statement(session, user_id=user_id, limit=LEDGER_LIMIT)
        avatars = (await session.scalars(_newest(Avatar, user_id))).all()
        generations = (await session.scalars(_newest(ImageGeneration, user_id))).all()
        transcripts = (await session.scalars(_newest(Transcript, user_id))).all()
    jobs = [_training(row) for row in avatars]
    jobs += [_generation(row) for row in generations]
    jobs += [_transcription(row) for row in transcripts]
    jobs.sort(key=lambda job: job["created_at"], reverse=True)
    return {
        "balance": balance,
        "on_hold": on_hold,
        "operations": [_operation(operation, t) for operation in operations.operations],
        "ledger": [_entry(item, t) for item in page.items],
        "jobs": jobs[:JOBS_LIMIT],
    }


def _newest(model: Any, user_id: int) -> Any:
    return select(model).where(model.user_id == user_id).order_by(model.created_at.desc()).limit(JOBS_LIMIT)


def _describe(t: Texts, item: HistoryItem | Operation) -> str:
    try:
        return t(item.description, **item.description_args)
    except (KeyError, IndexError, ValueError):
        return t(DEFAULT_DESCRIPTIONS[item.kind])


def _operation(operation: Operation, t: Texts) -> JsonDict:
    return {
        "created_at": _iso(operation.started_at),
        "kind": operation.kind.value,
        "state": operation.state.value,
        "amount": operation.amount,
        "description": _describe(t, operation),
        "entries": len(operation.entries),
    }


def _entry(item: HistoryItem, t: Texts) -> JsonDict:
    description = _describe(t, item)
    return {
        "id": str(item.id),
        "created_at": _iso(item.created_at),
        "kind": item.kind.value,
        "amount": item.amount,
        "balance_after": item.balance_after,
        "description": description,
    }


def _job(kind: str, row: Any, detail: str) -> JsonDict:
    if row.error:
        detail = f"{detail} · {row.error}"
    return {
        "kind": kind,
        "id": str(row.id),
        "status": str(row.status),
        "created_at": _iso(row.created_at),
        "detail": detail,
    }


def _training(avatar: Avatar) -> JsonDict:
    return _job("training", avatar, f"{avatar.name} ({avatar.type.value})")


def _generation(generation: ImageGeneration) -> JsonDict:
    return _job("generation", generation, generation.prompt[:_SUMMARY_CHARS])


def _transcription(transcript: Transcript) -> JsonDict:
    seconds = transcript.duration_ms // 1000
    return _job("transcription", transcript, f"{transcript.source_kind}, {seconds // 60}:{seconds % 60:02d}")


def service_calls(
    telegram: FakeTelegramServer, fal: FakeFalServer, openai: FakeOpenAIServer, *, limit: int = CALLS_LIMIT
) -> list[JsonDict]:
    """The newest calls the bot made to the three fakes, merged, newest first."""
    calls = [_telegram_call(call) for call in telegram.calls[-limit:]]
    calls += [_call("fal", at, method, path.split("?", 1)[0]) for at, method, path in fal.timeline[-limit:]]
    calls += [_call("openai", at, endpoint, summary) for at, endpoint, summary in openai.timeline[-limit:]]
    calls.sort(key=lambda call: call["at"], reverse=True)
    return calls[:limit]


def _telegram_call(call: RecordedCall) -> JsonDict:
    summary = next((str(call.params[key]) for key in _SUMMARY_PARAMS if call.params.get(key)), "")
    if str(call.params.get("parse_mode", "")).upper() == "HTML":
        summary = _plain(summary)
    if call.failed and call.error is not None:
        summary = f"{call.error.get('description', 'failed')} · {summary}"
    return _call("telegram", call.time.timestamp(), call.method, summary)


def _plain(html_text: str) -> str:
    """The text without its markup, as the chat shows it; as sent when it doesn't parse."""
    try:
        return parse_html(html_text)[0]
    except ValueError:
        return html_text


def _call(service: str, at: float, method: str, summary: str) -> JsonDict:
    return {
        "service": service,
        "at": _iso(datetime.fromtimestamp(at, UTC)),
        "method": method,
        "summary": summary[:_SUMMARY_CHARS],
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
