"""A fake OpenAI HTTP API that the real ``openai`` client talks to.

Tests and the sandbox point ``AsyncOpenAI(base_url=server.base_url)`` at it, so the client's
multipart encoding, response parsing and error mapping run for real. It answers:

- ``POST /v1/audio/transcriptions`` (multipart): ``json``, ``text``, ``verbose_json``, ``srt``
  or ``vtt`` as asked, with the checks OpenAI makes that our code could get wrong (a body over
  25 MB refused with 413 before anything else, a missing file or model, a file format it does not
  take, shorter than 0.1 s, a ``response_format`` the model doesn't answer: the gpt-4o
  transcribe models only ``json`` and ``text``). The text is a deterministic "simulated
  transcript" naming the upload and its length (read from the OGG, WAV or MP4 header), unless a test
  scripts it with ``transcripts``.
- ``POST /v1/chat/completions``: a fixed answer, or whatever ``chat_handler`` builds. Requests are
  checked as OpenAI checks them: message roles and contents, content part shapes, images only
  from the user, with ``detail`` auto/low/high, as http(s) URLs or base64 data URLs of a real
  image; the temperature's range; a ``json_schema`` response format's name and, when strict,
  objects that require every property and allow no others. Structured output is answered with
  the JSON that ``structured_replies[<schema name>]`` gives (a dict, or a callable of the body),
  else with a deterministic instance of the schema.

Failures are scripted with :meth:`FakeOpenAIServer.fail_next` and :meth:`fail_always`, and every
call is recorded. It runs inside the caller's event loop (``aiohttp.web``); nothing here blocks.

Split by concern into the modules of this package.
"""

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
