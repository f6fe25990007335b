"""The FAL trainer adapter sends each trainer its own schema; webhook routing; texts per reason."""

from __future__ import annotations

import uuid
from dataclasses import replace

import httpx
import pytest

from aisha.api.fal import FalWebhookRegistry
from aisha.avatars.models import AvatarType
from aisha.avatars.validation import RejectReason
from aisha.i18n import Translator
from aisha.providers.fal import FalClient
from aisha.providers.fal_training import FalTrainer, TrainerConfig
from aisha.remote import RemoteWebhook

CONFIG = TrainerConfig(
    portrait_endpoint="fal-ai/flux-lora-portrait-trainer",
    style_endpoint="fal-ai/flux-lora-fast-training",
    portrait_steps=2500,
    style_steps=1000,
)


async def _trainer() -> FalTrainer:
    return FalTrainer(FalClient(key="k", http=httpx.AsyncClient()), CONFIG)


async def test_portrait_payload_uses_trigger_phrase_and_steps() -> None:
    trainer = await _trainer()
    assert trainer.endpoint(AvatarType.PORTRAIT) == "fal-ai/flux-lora-portrait-trainer"
    assert trainer.payload(
        avatar_type=AvatarType.PORTRAIT, images_url="https://x/a.zip", trigger_phrase="ohwx1"
    ) == {
        "images_data_url": "https://x/a.zip",
        "trigger_phrase": "ohwx1",
        "steps": 2500,
        "data_archive_format": "zip",
    }


async def test_style_payload_uses_trigger_word_and_is_style() -> None:
    trainer = await _trainer()
    assert trainer.endpoint(AvatarType.STYLE) == "fal-ai/flux-lora-fast-training"
    assert trainer.payload(
        avatar_type=AvatarType.STYLE, images_url="https://x/a.zip", trigger_phrase="ohwx2"
    ) == {
        "images_data_url": "https://x/a.zip",
        "trigger_word": "ohwx2",
        "is_style": True,
        "steps": 1000,
        "data_archive_format": "zip",
    }


async def test_webhook_kinds_register_once() -> None:
    registry = FalWebhookRegistry()

    async def target(row_id: str, webhook: RemoteWebhook) -> bool:
        return True

    registry.register("avatar", target)
    with pytest.raises(ValueError, match="twice"):
        registry.register("avatar", target)
    assert registry.get("avatar") is target and registry.get("image") is None
    assert registry.kinds == ["avatar"]


@pytest.mark.parametrize("locale", ["ru", "en"])
def test_every_reject_reason_and_failure_has_a_text(locale: str) -> None:
    translator = Translator.load()
    for reason in [*RejectReason, "limit"]:
        assert translator.get(locale, f"avatars.refused.{reason}")
    for failure in ("provider", "timeout", "refused", "unavailable", "insufficient"):
        assert translator.get(locale, f"avatars.failure.{failure}")


async def test_the_trainer_puts_the_avatar_in_fals_webhook_url_or_polls_without_one() -> None:
    avatar_id = uuid.uuid4()
    client = FalClient(key="k", http=httpx.AsyncClient())
    webhook = FalTrainer(client, replace(CONFIG, public_base_url="https://bot.example")).webhook_url(
        avatar_id
    )
    assert webhook == f"https://bot.example/webhooks/fal?kind=avatar&id={avatar_id}"
    assert FalTrainer(client, CONFIG).webhook_url(avatar_id) is None
