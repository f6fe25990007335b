"""What starting a transcription can be refused for, with the data its message needs.

Besides these, :meth:`~aisha.transcription.service.TranscriptionService.start` raises
``aisha.operations.Busy`` (another operation of the user is starting) and ``aisha.messaging``'s
``FileTooLarge`` and ``NotEnoughRoom`` (the recording can't be downloaded): nothing is held then.
"""

from __future__ import annotations


class TranscriptionUnavailable(Exception):
    """No speech backend is configured (no OPENAI_API_KEY and no local Whisper)."""


class TooManyTranscriptions(Exception):
    """The user already has the most transcriptions running that the operator allows."""

    def __init__(self, limit: int, *, running: int) -> None:
        self.limit = limit
        self.running = running
        super().__init__(f"{running} transcriptions in flight, at most {limit} allowed")
