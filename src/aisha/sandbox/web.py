"""The sandbox's page and its JSON API (docs/sandbox-api.md), which the page (static/app.js) uses.

Handlers only read the request and shape the answer; the simulated user (user.py) acts in the
chat and panel.py reads what the operator sees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from aiohttp import web

from aisha.sandbox import panel
from aisha.sandbox.errors import SandboxError
from aisha.sandbox.uploads import read_form

if TYPE_CHECKING:
    from aisha.i18n import Translator
    from aisha.runtime import Runtime
    from aisha.sandbox.fal import FakeFalServer
    from aisha.sandbox.openai import FakeOpenAIServer
    from aisha.sandbox.telegram import FakeTelegramServer
    from aisha.sandbox.user import SandboxUser


class Sandbox(Protocol):
    """What the page reads of the running sandbox (`aisha.sandbox.app.Sandbox`, which serves it)."""

    @property
    def language(self) -> str: ...

    @property
    def translator(self) -> Translator: ...

    @property
    def telegram(self) -> FakeTelegramServer: ...

    @property
    def fal(self) -> FakeFalServer: ...

    @property
    def openai(self) -> FakeOpenAIServer: ...

    @property
    def user(self) -> SandboxUser: ...

    @property
    def runtime(self) -> Runtime: ...


STATIC_DIR = Path(__file__).parent / "static"
LONG_POLL_SECONDS = 25.0
SANDBOX: web.AppKey[Sandbox] = web.AppKey("sandbox")
CHANGES: web.AppKey[ChangeSignal] = web.AppKey("changes")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChangeSignal:
    """Wakes the long polls whenever the fake Telegram reports a change to the chat."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiting = 0  # long polls waiting right now

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, changed: Callable[[], bool], timeout: float) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.waiting += 1
        try:
            while not changed() and (remaining := deadline - loop.time()) > 0:
                event = self._event
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    return
        finally:
            self.waiting -= 1


def create_app(sandbox: Sandbox) -> web.Application:
    app = web.Application(middlewares=[_json_errors, _same_origin])
    app[SANDBOX] = sandbox
    app[CHANGES] = changes = ChangeSignal()
    sandbox.telegram.add_change_listener(changes.notify)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/chat", _chat)
    app.router.add_post("/api/message", _message)
    app.router.add_post("/api/upload", _upload)
    app.router.add_post("/api/press", _press)
    app.router.add_post("/api/pay", _pay)
    app.router.add_get("/api/files/{file_id}", _file)
    app.router.add_get("/api/panel", _panel)
    app.router.add_get("/api/calls/{service}/{number}", _call)
    return app


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals as ``{"error": text}`` in the user's language, for every /api/ path."""
    sandbox = request.app[SANDBOX]
    try:
        return await handler(request)
    except SandboxError as error:
        text = sandbox.translator.get(sandbox.language, error.key, **error.args_)
        return web.json_response({"error": text}, status=error.status)
    except web.HTTPNotFound:
        if not request.path.startswith("/api/"):
            raise
        text = sandbox.translator.get(sandbox.language, "sandbox.error_not_found")
        return web.json_response({"error": text}, status=404)


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


@web.middleware
async def _same_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Only this page may use the API: another site open in the same browser could otherwise post
    a form to 127.0.0.1 (no CORS preflight for forms), or reach it through DNS rebinding."""
    if (request.host.rsplit(":", 1)[0]) not in _LOCAL_HOSTS:
        raise SandboxError(403, "sandbox.error_foreign_host")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise SandboxError(403, "sandbox.error_foreign_origin")
    return await handler(request)


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _chat(request: web.Request) -> web.Response:
    """The chat; with ``since`` a long poll: waits while the version is still ``since``."""
    sandbox = request.app[SANDBOX]
    since = request.query.get("since")
    if since is not None:
        try:
            seen = int(since)
        except ValueError:
            raise SandboxError(400, "sandbox.error_since") from None
        # A version other than the one seen (even a lower one: a new data folder) is news.
        await request.app[CHANGES].wait(lambda: sandbox.telegram.version != seen, LONG_POLL_SECONDS)
    return web.json_response(chat_view(sandbox))


def chat_view(sandbox: Sandbox) -> dict[str, Any]:
    telegram, user = sandbox.telegram, sandbox.user.profile
    messages = [
        {**message, "outgoing": message.get("from", {}).get("id") == user.id}
        for message in telegram.chat_messages(user.id)
    ]
    return {
        "version": telegram.version,
        "user": {"id": user.id, "first_name": user.first_name, "language_code": user.language_code},
        "bot": {
            "id": telegram.bot_id,
            "username": telegram.bot_username,
            "first_name": telegram.bot_first_name,
        },
        "messages": messages,
        "reply_keyboard": telegram.reply_keyboard(user.id),
        "commands": telegram.commands_for(user.id, user.language_code),
    }


async def _message(request: web.Request) -> web.Response:
    text = (await _json_body(request)).get("text")
    message_id = await request.app[SANDBOX].user.say(text if isinstance(text, str) else "")
    return web.json_response({"ok": True, "message_id": message_id})


async def _upload(request: web.Request) -> web.Response:
    if not request.content_type.startswith("multipart/"):
        raise SandboxError(400, "sandbox.error_no_file")
    fields, uploads = await read_form(request)
    sandbox = request.app[SANDBOX]
    message_ids = await sandbox.user.send_files(fields.get("kind", ""), uploads, fields.get("caption"))
    return web.json_response({"ok": True, "message_ids": message_ids})


async def _press(request: web.Request) -> web.Response:
    body = await _json_body(request)
    data = body.get("data")
    answer = await request.app[SANDBOX].user.press(
        body.get("message_id"), data if isinstance(data, str) else ""
    )
    return web.json_response({"ok": True, "answer": answer})


async def _pay(request: web.Request) -> web.Response:
    body = await _json_body(request)
    refusal = await request.app[SANDBOX].user.pay(body.get("message_id"))
    if refusal is not None:
        return web.json_response({"ok": False, "error": refusal})
    return web.json_response({"ok": True})


async def _file(request: web.Request) -> web.StreamResponse:
    file_id = request.match_info["file_id"]
    stored = request.app[SANDBOX].telegram.get_file(file_id)
    if stored is None:
        raise SandboxError(404, "sandbox.error_no_file_id", file_id=file_id)
    if stored.content is None:  # sent by URL: Telegram would have fetched it
        raise web.HTTPFound(stored.url or "/")
    headers = {}
    if request.query.get("download"):
        name = stored.file_name or stored.file_path.rsplit("/", 1)[-1]
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return web.Response(
        body=stored.content,
        content_type=stored.mime_type or "application/octet-stream",
        headers=headers,
    )


async def _panel(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    t = sandbox.translator.bind(sandbox.language)
    view = await panel.account(sandbox.runtime.services, user_id=sandbox.user.profile.id, t=t)
    view["calls"] = panel.service_calls(sandbox.telegram, sandbox.fal, sandbox.openai)
    return web.json_response(view)


async def _call(request: web.Request) -> web.Response:
    """One call to a fake with its request and response, when the operator opens it."""
    sandbox = request.app[SANDBOX]
    service, number = request.match_info["service"], request.match_info["number"]
    detail = None
    if number.isdigit():
        detail = panel.call_detail(
            sandbox.telegram, sandbox.fal, sandbox.openai, service=service, number=int(number)
        )
    if detail is None:
        raise SandboxError(404, "sandbox.error_no_call")
    return web.json_response(detail)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SandboxError(400, "sandbox.error_bad_json") from None
    if not isinstance(body, dict):
        raise SandboxError(400, "sandbox.error_bad_json")
    return body
