"""The operator's side panel: the user's account and jobs (from the bot's database) and the calls
the bot made to each fake service, newest first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from sqlalchemy import select

from aisha.avatars.models import Avatar, AvatarStatus
from aisha.billing.models import CreditHold, EntryKind, HoldStatus
from aisha.billing.service import DEFAULT_DESCRIPTIONS, HistoryItem
from aisha.billing.statement import Operation, statement
from aisha.container import Services
from aisha.db.base import JobStatus
from aisha.generation.models import ImageGeneration
from aisha.i18n import Texts
from aisha.sandbox.exchanges import Exchange, shorten
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.openai import FakeOpenAIServer
from aisha.sandbox.telegram import FakeTelegramServer, RecordedCall, parse_html
from aisha.transcription.models import Transcript

JsonDict = dict[str, Any]

LEDGER_LIMIT = 50
JOBS_LIMIT = 50
CALLS_LIMIT = 100
_SUMMARY_CHARS = 100
_SUCCEEDED = frozenset({JobStatus.SUCCEEDED.value, AvatarStatus.READY.value})
_FAILED = frozenset({JobStatus.FAILED.value, AvatarStatus.FAILED.value})
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
        rows = [*avatars, *generations, *transcripts]
        hold_ids = {row.hold_id for row in rows if row.hold_id is not None}
        holds = {
            hold.id: hold
            for hold in await session.scalars(select(CreditHold).where(CreditHold.id.in_(hold_ids)))
        }
        avatar_names = await session.execute(select(Avatar.id, Avatar.name).where(Avatar.user_id == user_id))
        names = {avatar_id: name for avatar_id, name in avatar_names}
    jobs = [_job("training", row, f"{row.name} ({row.type.value})", row.name, holds) for row in avatars]
    jobs += [_job("generation", row, _prompt(row), names.get(row.avatar_id), holds) for row in generations]
    jobs += [_job("transcription", row, _transcript(row), None, holds) for row in transcripts]
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
        # A paid job's hold and its capture or release are one operation: not a "hold".
        "kind": "job" if operation.kind is EntryKind.HOLD else operation.kind.value,
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


def _job(
    kind: str, row: Any, detail: str, avatar: str | None, holds: dict[uuid.UUID, CreditHold]
) -> JsonDict:
    """A job as the operator checks it: what it cost, with which avatar, how long it took, why it
    failed and its id at the provider (to look it up in FAL's dashboard)."""
    finished = row.finished_at
    return {
        "kind": kind,
        "id": str(row.id),
        "status": str(row.status),
        "created_at": _iso(row.created_at),
        "detail": detail,
        "avatar": avatar,
        "price": row.price,
        "charged": _charged(row, holds.get(row.hold_id) if row.hold_id is not None else None),
        "duration_seconds": None
        if finished is None
        else round((finished - row.created_at).total_seconds(), 1),
        "error": row.error,
        "provider_request_id": getattr(row, "provider_request_id", None),
    }


def _charged(row: Any, hold: CreditHold | None) -> int | None:
    """Credits the job took in the end: what its hold captured; None while it is still running."""
    if hold is not None:
        return None if hold.status is HoldStatus.ACTIVE else hold.captured_amount
    # No hold left to ask (free, or the hold's row is gone): a success cost its price.
    if str(row.status) in _SUCCEEDED:
        return int(getattr(row, "cost", row.price))
    return 0 if str(row.status) in _FAILED else None


def _prompt(generation: ImageGeneration) -> str:
    return generation.prompt[:_SUMMARY_CHARS]


def _transcript(transcript: Transcript) -> str:
    seconds = transcript.duration_ms // 1000
    return f"{transcript.source_kind}, {seconds // 60}:{seconds % 60:02d}"


def service_calls(
    telegram: FakeTelegramServer, fal: FakeFalServer, openai: FakeOpenAIServer, *, limit: int = CALLS_LIMIT
) -> list[JsonDict]:
    """The newest calls the bot made to the three fakes, merged, newest first."""
    calls = [_telegram_call(call) for call in telegram.calls[-limit:]]
    calls += [_fal_call(exchange) for exchange in fal.exchanges.recent(limit)]
    calls += [_openai_call(exchange) for exchange in openai.exchanges.recent(limit)]
    calls.sort(key=lambda call: call["at"], reverse=True)
    return calls[:limit]


def call_detail(
    telegram: FakeTelegramServer, fal: FakeFalServer, openai: FakeOpenAIServer, *, service: str, number: int
) -> JsonDict | None:
    """One call with what the bot sent and what the fake answered; None when it is not kept (any
    more). Long strings are cut and files named by size; no header, so no key, is ever shown."""
    if service == "telegram":
        call = next((call for call in reversed(telegram.calls) if call.number == number), None)
        if call is None:
            return None
        return _telegram_call(call) | {
            "path": call.method,
            "status": None if not call.answered else int((call.error or {}).get("error_code", 200)),
            "request": _telegram_request(call),
            "response": shorten(call.error if call.failed else call.result) if call.answered else None,
        }
    log = {"fal": fal.exchanges, "openai": openai.exchanges}.get(service)
    exchange = log.get(number) if log is not None else None
    if exchange is None:
        return None
    listed = _fal_call(exchange) if service == "fal" else _openai_call(exchange)
    return listed | {
        "path": unquote(exchange.path),  # the fal_webhook URL readable
        "status": exchange.status,
        "request": exchange.request,
        "response": exchange.response,
    }


# Sent to Telegram but not for the operator's eyes: the webhook's shared secret.
_SECRET_PARAMS = frozenset({"secret_token"})


def _telegram_request(call: RecordedCall) -> JsonDict:
    params = {key: "•••" if key in _SECRET_PARAMS else value for key, value in call.params.items()}
    files = {name: f"{len(data)} bytes" for name, data in call.files.items()}
    request: JsonDict = shorten(params) | files
    return request


def _telegram_call(call: RecordedCall) -> JsonDict:
    summary = next((str(call.params[key]) for key in _SUMMARY_PARAMS if call.params.get(key)), "")
    if str(call.params.get("parse_mode", "")).upper() == "HTML":
        summary = _plain(summary)
    if call.failed and call.error is not None:
        summary = f"{call.error.get('description', 'failed')} · {summary}"
    return _call("telegram", call.number, call.time.timestamp(), call.method, summary)


def _fal_call(exchange: Exchange) -> JsonDict:
    path = exchange.path.split("?", 1)[0]  # the fal_webhook URL is for the details
    summary = f"{path} {exchange.summary}" if exchange.summary else path
    return _call("fal", exchange.number, exchange.at, exchange.method, summary)


def _openai_call(exchange: Exchange) -> JsonDict:
    endpoint = exchange.path.split("?", 1)[0].removeprefix("/v1/")
    return _call("openai", exchange.number, exchange.at, endpoint, exchange.summary)


def _plain(html_text: str) -> str:
    """The text without its markup, as the chat shows it; as sent when it doesn't parse."""
    try:
        return parse_html(html_text)[0]
    except ValueError:
        return html_text


def _call(service: str, number: int, at: float, method: str, summary: str) -> JsonDict:
    return {
        "service": service,
        "number": number,
        "at": _iso(datetime.fromtimestamp(at, UTC)),
        "method": method,
        "summary": summary[:_SUMMARY_CHARS],
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
