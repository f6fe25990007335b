"""GET /metrics as Prometheus scrapes it: updates, credits and jobs; closed without the token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aisha.runtime import Runtime
from aisha.sandbox import FakeTelegramServer, FakeUser
from tests.e2e.conftest import buttons, eventually, press, say

METRICS_TOKEN = "metrics-token-0123456789"


async def _scrape(runtime: Runtime, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{runtime.http_port}/metrics", headers=headers)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_samples(runtime: Runtime) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await _scrape(runtime)
    assert response.status_code == 200
    return _samples(response.text)


async def _top_up(telegram: FakeTelegramServer, user: FakeUser) -> None:
    menu = await say(telegram, user, "/topup")
    assert ("100 ⭐ → 110 credits", "buy:m") in buttons(menu)
    press(telegram, user, "buy:m", menu)
    invoice = await telegram.wait_for_call("sendInvoice", lambda c: c.params.get("chat_id") == user.id)
    payload = invoice.params["payload"]
    telegram.queue_update(
        telegram.pre_checkout_update(user, currency="XTR", total_amount=100, invoice_payload=payload)
    )
    await telegram.wait_for_call("answerPreCheckoutQuery")
    telegram.queue_update(
        telegram.successful_payment_update(
            user, currency="XTR", total_amount=100, invoice_payload=payload, telegram_payment_charge_id="ch-1"
        )
    )
    await telegram.wait_for_call("sendMessage", lambda c: "Thank you" in c.params["text"])


async def test_metrics_show_updates_and_topped_up_credits(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime: Runtime = await start_app(make_settings())
    user = FakeUser(id=7001, first_name="Alice", language_code="en")
    await say(telegram, user, "/start")
    await _top_up(telegram, user)

    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

    async def credited() -> bool:
        nonlocal scraped
        response = await _scrape(runtime)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        scraped = _samples(response.text)
        return value(scraped, "aisha_credits_total", kind="topped_up") == 110

    await eventually(credited)  # the handler answers before its transaction commits
    handled_messages = value(scraped, "aisha_updates_total", type="message", outcome="handled")
    assert handled_messages >= 2  # /start, /topup and the payment
    assert value(scraped, "aisha_updates_total", type="callback_query", outcome="handled") == 1
    assert value(scraped, "aisha_updates_total", type="pre_checkout_query", outcome="handled") == 1
    assert value(scraped, "aisha_update_duration_seconds_count", type="message") == handled_messages
    assert value(scraped, "aisha_avatars", status="ready") == 0
    assert value(scraped, "aisha_generations", status="succeeded") == 0
    assert value(scraped, "aisha_credits_total", kind="held") == 0
    assert value(scraped, "aisha_transcription_minutes_total") == 0
    assert ("aisha_provider_cost_usd_total", frozenset({("feature", "generation")})) in scraped


async def test_a_repeated_update_is_counted_as_a_duplicate(
    telegram: FakeTelegramServer, make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime: Runtime = await start_app(make_settings())
    user = FakeUser(id=7002, first_name="Bob", language_code="en")
    update = telegram.message_update(user, "/start")
    telegram.queue_update(update)
    telegram.queue_update(update)

    async def counted() -> bool:
        samples = _samples((await _scrape(runtime)).text)
        return (
            value(samples, "aisha_updates_total", type="message", outcome="handled") == 1
            and value(samples, "aisha_updates_total", type="message", outcome="duplicate") == 1
        )

    await eventually(counted)


async def test_metrics_token_is_required_when_set(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    runtime: Runtime = await start_app(make_settings(metrics_token=METRICS_TOKEN))
    assert (await _scrape(runtime)).status_code == 401
    assert (await _scrape(runtime, "wrong-token-0123456789")).status_code == 401
    async with httpx.AsyncClient() as client:
        basic = await client.get(
            f"http://127.0.0.1:{runtime.http_port}/metrics", headers={"Authorization": METRICS_TOKEN}
        )
    assert basic.status_code == 401  # the token without the Bearer scheme
    response = await _scrape(runtime, METRICS_TOKEN)
    assert response.status_code == 200
    assert "# TYPE aisha_credits_total counter" in response.text
    assert METRICS_TOKEN not in response.text


async def test_metrics_are_served_only_inside_the_allowed_networks(
    make_settings: Callable[..., Any], start_app: Callable[..., Any]
) -> None:
    # Only their HTTP apps: two bots polling one token would be refused by Telegram (409).
    outside: Runtime = await start_app(make_settings(metrics_allowed_networks="10.0.0.0/8"), serve_only=True)
    response = await _scrape(outside)  # from 127.0.0.1
    assert response.status_code == 403
    assert "aisha_" not in response.text
    inside: Runtime = await start_app(
        make_settings(metrics_allowed_networks="10.0.0.0/8,127.0.0.1/32", metrics_token=METRICS_TOKEN),
        serve_only=True,
    )
    assert (await _scrape(inside)).status_code == 401  # inside, but the token is still required
    assert (await _scrape(inside, METRICS_TOKEN)).status_code == 200
