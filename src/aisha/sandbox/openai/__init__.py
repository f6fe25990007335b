"""The fake OpenAI API server, split by concern; see :mod:`aisha.sandbox.fake_openai`."""

from aisha.sandbox.openai.checks import chat_image_urls, chat_json_schema, schema_instance
from aisha.sandbox.openai.models import (
    MAX_UPLOAD_BYTES,
    ChatHandler,
    FakeTranscript,
    StructuredReply,
    TranscriptionRequest,
    TranscriptScript,
    audio_duration,
    chat_completion,
)
from aisha.sandbox.openai.server import FakeOpenAIServer

__all__ = [
    "MAX_UPLOAD_BYTES",
    "ChatHandler",
    "FakeOpenAIServer",
    "FakeTranscript",
    "StructuredReply",
    "TranscriptScript",
    "TranscriptionRequest",
    "audio_duration",
    "chat_completion",
    "chat_image_urls",
    "chat_json_schema",
    "schema_instance",
]
