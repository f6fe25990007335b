"""Fakes of external protocols for end-to-end tests and the sandbox mode."""

from aisha.sandbox.fal import FakeFalServer
from aisha.sandbox.openai import FakeOpenAIServer, FakeTranscript
from aisha.sandbox.telegram import (
    FakeTelegramServer,
    FakeUser,
    RecordedCall,
    StoredFile,
    WebhookConfig,
    image_size,
    parse_html,
)

__all__ = [
    "FakeFalServer",
    "FakeOpenAIServer",
    "FakeTelegramServer",
    "FakeTranscript",
    "FakeUser",
    "RecordedCall",
    "StoredFile",
    "WebhookConfig",
    "image_size",
    "parse_html",
]
