"""The fake Telegram server's HTTP layer and call recording."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from aisha.sandbox.faults import Fault, never_answer
from aisha.sandbox.telegram.constants import _READ_ONLY_METHODS, JsonDict
from aisha.sandbox.telegram.files import FileStore
from aisha.sandbox.telegram.models import (
    RecordedCall,
    RefusedCall,
    _ApiError,
    _ExpectedRefusal,
    _Failure,
    _Handler,
    _Request,
    _Upload,
)
from aisha.sandbox.telegram.params import _read_request

log = logging.getLogger("aisha.sandbox.telegram")
# How long a test waits by default for a call or a handled update: generous, since it only bounds a
# failing test, and a loaded 2-core CI machine was seen taking 2.5 s for what takes 0.2 s alone.
WAIT_LIMIT = 30.0


class CallLog(FileStore):
    """The HTTP layer: every request recorded, refusals and injected failures, what tests wait for."""

    def calls_of(self, method: str) -> list[RecordedCall]:
        key = method.lower()
        return [call for call in self.calls if call.method.lower() == key]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[RecordedCall], bool] | None = None,
        *,
        timeout: float = WAIT_LIMIT,  # noqa: ASYNC109 - tests read better with a per-call timeout
        refused: bool = False,
    ) -> RecordedCall:
        """Return the next ``method`` call after the one this returned last time, once answered.

        Each method has its own cursor, so repeated ``wait_for_call("sendMessage")`` walks
        through the bot's messages in order. With a predicate, calls before the match are
        skipped for good. A matching call the fake refused raises :class:`RefusedCall` at once
        (with Telegram's error description), unless the refusal was expected (fault injection,
        ``expect_refusal``) or ``refused=True`` asks for refused calls too. ``getUpdates`` is
        returned as soon as it arrives (a long poll is answered only later).
        """
        key = method.lower()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = self._call_event
                    if (call := self._take_match(key, predicate, refused=refused)) is not None:
                        return call
                    await event.wait()
        except TimeoutError:
            # The call may have come while the event loop was stalled past the deadline.
            if (call := self._take_match(key, predicate, refused=refused)) is not None:
                return call
            recent = ", ".join(call.method for call in self.calls[-10:]) or "none"
            raise TimeoutError(
                f"no matching {method} call within {timeout}s (last calls: {recent})"
            ) from None

    def _take_match(
        self, key: str, predicate: Callable[[RecordedCall], bool] | None, *, refused: bool
    ) -> RecordedCall | None:
        """The next answered matching call, moving the cursor past it (RefusedCall if refused)."""
        index = self._next_match(key, predicate)
        if index is None or not (self.calls[index].answered or key == "getupdates"):
            return None
        call = self.calls[index]
        self._cursors[key] = index + 1
        if call.failed and not call.expected and not refused:
            raise RefusedCall(call)
        return call

    def _next_match(self, key: str, predicate: Callable[[RecordedCall], bool] | None) -> int | None:
        for index in range(self._cursors.get(key, 0), len(self.calls)):
            call = self.calls[index]
            if call.method.lower() == key and (predicate is None or predicate(call)):
                return index
        return None

    def expect_refusal(self, method: str, contains: str = "", *, times: int = 1) -> None:
        """The next ``times`` refusals of ``method`` whose description contains ``contains`` are
        ones the test means to cause: ``wait_for_call`` returns them and ``unexpected_refusals``
        leaves them out."""
        self._expected_refusals.append(_ExpectedRefusal(method.lower(), contains, times))

    def unexpected_refusals(self) -> list[RecordedCall]:
        """Calls the fake refused as Telegram would, that no test asked for: each one is a
        message, keyboard or request the real Telegram would have refused too."""
        return [call for call in self.calls if call.failed and not call.expected]

    def mark_handled(self, update_id: int) -> None:
        """The bot finished handling this update. A webhook's answer says so by itself; with
        polling, whoever runs the bot in-process reports it (the e2e harness wraps the
        dispatcher's ``feed_update``)."""
        self._handled[update_id] += 1
        event, self._handled_event = self._handled_event, asyncio.Event()
        event.set()

    async def wait_until_handled(
        self,
        *updates: int | JsonDict,
        timeout: float = WAIT_LIMIT,  # noqa: ASYNC109 - tests read better with a per-call timeout
    ) -> None:
        """Wait until the bot has finished handling ``updates`` (updates or their ids; none: every
        update delivered so far): then whatever it was going to send in answer has been sent,
        and asserting that nothing happened checks something. An update delivered twice must
        have been handled twice."""
        ids = {int(u["update_id"]) if isinstance(u, dict) else u for u in updates} or set(self._delivered)

        def missing() -> list[int]:
            return sorted(i for i in ids if self._handled[i] < max(self._delivered[i], 1))

        try:
            async with asyncio.timeout(timeout):
                while missing():
                    await self._handled_event.wait()
        except TimeoutError:
            if missing():  # else handled while the event loop was stalled past the deadline
                raise TimeoutError(f"updates {missing()} were not handled within {timeout}s") from None

    def clear_calls(self) -> None:
        self.calls.clear()
        self.downloads.clear()
        self._cursors.clear()

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        *,
        description: str | None = None,
        retry_after: int | None = 1,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with a Telegram error.

        ``retry_after`` only applies to 429 (Telegram sends it with flood waits alone, and
        aiogram would turn any error carrying it into ``TelegramRetryAfter``).
        """
        if error_code == 429 and retry_after is not None:
            default = f"Too Many Requests: retry after {retry_after}"
        else:
            retry_after = None
            default = {
                400: "Bad Request",
                401: "Unauthorized",
                403: "Forbidden: bot was blocked by the user",
                404: "Not Found",
                409: "Conflict",
                429: "Too Many Requests",
            }.get(error_code, "Internal Server Error")
        failure = _Failure(error_code, description or default, retry_after, times)
        self._failures.setdefault(method.lower(), deque()).append(failure)

    def fail_nth(self, method: str, fault: Fault, n: int = 1) -> None:
        """The ``n``-th call of ``method`` from now fails with ``fault`` (403 is "bot was blocked
        by the user"; 429 asks to retry after 1 s; TIMEOUT never answers; RESET drops the line)."""
        self.faults.add(method, fault, n)

    def _take_failure(self, method: str) -> _ApiError | None:
        queue = self._failures.get(method.lower())
        if not queue:
            return None
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            queue.popleft()
        parameters = {"retry_after": failure.retry_after} if failure.retry_after is not None else None
        return _ApiError(failure.error_code, failure.description, parameters)

    def _take_expected_refusal(self, method: str, description: str) -> bool:
        key = method.lower()
        for expectation in self._expected_refusals:
            if expectation.method == key and expectation.contains in description:
                expectation.remaining -= 1
                if expectation.remaining <= 0:
                    self._expected_refusals.remove(expectation)
                return True
        return False

    def _notify_calls(self) -> None:
        event, self._call_event = self._call_event, asyncio.Event()
        event.set()

    def _token_ok(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.match_info["token"].encode(), self._token.encode())

    async def _handle_method(self, request: web.Request) -> web.StreamResponse:
        raw_method = request.match_info["method"]
        name, handler = self._handlers.get(raw_method.lower(), (raw_method, None))
        try:
            params, uploads = await _read_request(request)
        except _ApiError as error:
            return self._respond(self._record(name, {}, {}), error)
        call = self._record(name, params, uploads)
        if not self._token_ok(request):
            return self._respond(call, _ApiError(401, "Unauthorized"), expected=True)
        fault = self.faults.take(call.method)
        if fault is not None:
            return await self._inject(request, call, fault)
        return await self._execute(call, handler, _Request(params, uploads))

    async def _inject(self, request: web.Request, call: RecordedCall, fault: Fault) -> web.StreamResponse:
        status = fault.status
        if status is None:
            call.failed = call.answered = call.expected = True
            call.error = {"ok": False, "fault": fault.value}
            self._notify_calls()
            return await never_answer(request, fault)
        description = {
            403: "Forbidden: bot was blocked by the user",
            429: "Too Many Requests: retry after 1",
        }.get(status, "Internal Server Error")
        parameters = {"retry_after": 1} if status == 429 else None
        return self._respond(call, _ApiError(status, description, parameters), expected=True)

    async def _execute(self, call: RecordedCall, handler: _Handler | None, req: _Request) -> web.Response:
        failure = self._take_failure(call.method)
        if failure is not None:
            return self._respond(call, failure, expected=True)
        try:
            result = True if handler is None else await handler(req)
        except _ApiError as error:
            return self._respond(call, error)
        except Exception as exc:  # a bug in the fake must reach the test, not hang it
            log.exception("fake telegram: %s failed", call.method)
            self.errors.append(f"{call.method}: {exc!r}")
            return self._respond(call, _ApiError(500, f"Internal Server Error: {exc!r}"))
        call.result = result
        call.answered = True
        self._notify_calls()
        if call.method.lower() not in _READ_ONLY_METHODS:
            self._changed()
        return web.json_response({"ok": True, "result": result})

    def _record(self, method: str, params: JsonDict, uploads: dict[str, _Upload]) -> RecordedCall:
        files = {name: upload.data for name, upload in uploads.items()}
        self._calls_recorded += 1
        call = RecordedCall(
            method=method, params=params, files=files, time=datetime.now(UTC), number=self._calls_recorded
        )
        self.calls.append(call)
        if self._keep_calls is not None and len(self.calls) >= 2 * self._keep_calls:
            self._forget_calls(len(self.calls) - self._keep_calls)
        self._notify_calls()
        return call

    def _forget_calls(self, count: int) -> None:
        """Drop the oldest ``count`` calls; wait_for_call's cursors move along with the list."""
        del self.calls[:count]
        self._cursors = {method: max(0, cursor - count) for method, cursor in self._cursors.items()}

    def _respond(self, call: RecordedCall, error: _ApiError, *, expected: bool = False) -> web.Response:
        call.failed = call.answered = True
        call.error = error.to_json()
        call.expected = expected or self._take_expected_refusal(call.method, error.description)
        self._notify_calls()
        return web.json_response(call.error, status=error.error_code)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if not self._token_ok(request):
            return web.json_response(_ApiError(401, "Unauthorized").to_json(), status=401)
        path = request.match_info["file_path"]
        stored = self._files_by_path.get(path)
        if stored is None or stored.content is None or self._local_dir is not None:
            return web.json_response(_ApiError(404, "Not Found").to_json(), status=404)
        self.downloads.append(path)
        return web.Response(body=stored.content, content_type=stored.mime_type or "application/octet-stream")
