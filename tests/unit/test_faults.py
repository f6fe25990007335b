"""fail_nth: each fake fails exactly the n-th matching call, the way the real service would fail,
as the real clients (aiogram, httpx, openai) see it."""

from __future__ import annotations

import httpx
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramForbiddenError, TelegramNetworkError, TelegramServerError
from openai import APIConnectionError, APITimeoutError, AsyncOpenAI, InternalServerError

from aisha.sandbox import FakeTelegramServer
from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.faults import Fault, FaultPlan
from aisha.sandbox.openai import FakeOpenAIServer


def test_the_plan_fails_only_the_nth_matching_call() -> None:
    plan = FaultPlan("test")
    plan.add("sendMessage", Fault.FORBIDDEN, n=2)
    assert plan.take("getMe") is None
    assert plan.take("sendmessage") is None
    assert plan.take("sendMessage") is Fault.FORBIDDEN
    assert plan.take("sendMessage") is None
    assert plan.injected == [("sendmessage", Fault.FORBIDDEN)]


def test_a_fragment_plan_matches_inside_the_path() -> None:
    plan = FaultPlan("test", by_fragment=True)
    plan.add("/requests/", Fault.SERVER_ERROR)
    assert plan.take("POST /fal-ai/flux-lora") is None
    assert plan.take("GET /fal-ai/flux-lora/requests/abc/status") is Fault.SERVER_ERROR


def test_n_counts_from_one() -> None:
    with pytest.raises(ValueError):
        FaultPlan("test").add("x", Fault.RESET, n=0)


def _bot(server: FakeTelegramServer, timeout: float = 30) -> Bot:
    session = AiohttpSession(api=TelegramAPIServer.from_base(server.base_url), timeout=timeout)
    return Bot(server.token, session=session)


async def test_telegram_forbidden_then_the_next_call_goes_through() -> None:
    async with FakeTelegramServer() as server:
        bot = _bot(server)
        try:
            server.fail_nth("sendMessage", Fault.FORBIDDEN, n=2)
            await bot.send_message(42, "first")
            with pytest.raises(TelegramForbiddenError, match="blocked by the user"):
                await bot.send_message(42, "second")
            await bot.send_message(42, "third")
        finally:
            await bot.session.close()
        assert [c.params.get("text") for c in server.calls_of("sendMessage") if not c.failed] == [
            "first",
            "third",
        ]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.SERVER_ERROR, TelegramServerError),
        (Fault.TIMEOUT, TelegramNetworkError),
        (Fault.RESET, TelegramNetworkError),
    ],
)
async def test_telegram_faults_reach_aiogram_as_the_real_ones_would(fault: Fault, error: type) -> None:
    async with FakeTelegramServer() as server:
        bot = _bot(server, timeout=1)
        try:
            server.fail_nth("sendMessage", fault)
            with pytest.raises(error):
                await bot.send_message(42, "hello")
        finally:
            await bot.session.close()


@pytest.mark.parametrize("fault", [Fault.TIMEOUT, Fault.RESET, Fault.SERVER_ERROR])
async def test_fal_faults_reach_httpx(fault: Fault) -> None:
    async with FakeFalServer() as fal, httpx.AsyncClient(timeout=1) as http:
        fal.fail_nth("POST /fal-ai/", fault)
        if fault is Fault.SERVER_ERROR:
            response = await http.post(f"{fal.base_url}/fal-ai/flux-lora", json={})
            assert response.status_code == 500
        else:
            with pytest.raises(httpx.TransportError):
                await http.post(f"{fal.base_url}/fal-ai/flux-lora", json={})
        assert fal.faults.injected == [("post /fal-ai/flux-lora", fault)]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.SERVER_ERROR, InternalServerError),
        (Fault.TIMEOUT, APITimeoutError),
        (Fault.RESET, APIConnectionError),
    ],
)
async def test_openai_faults_reach_the_sdk(fault: Fault, error: type) -> None:
    async with FakeOpenAIServer() as server:
        client = AsyncOpenAI(api_key="x", base_url=server.base_url, timeout=1, max_retries=0)
        try:
            server.fail_nth("chat/completions", fault)
            with pytest.raises(error):
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
            answer = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
        finally:
            await client.close()
