"""Fakes of external protocols for end-to-end tests and the sandbox mode."""

from aisha.sandbox.fake_telegram import (
    FakeTelegramServer,
    FakeUser,
    RecordedCall,
    StoredFile,
    WebhookConfig,
    image_size,
    parse_html,
)

__all__ = [
    "FakeTelegramServer",
    "FakeUser",
    "RecordedCall",
    "StoredFile",
    "WebhookConfig",
    "image_size",
    "parse_html",
]
