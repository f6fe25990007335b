"""Errors of image generation; handlers map them to locale texts."""

from __future__ import annotations


class GenerationError(Exception):
    """Base of every generation error."""


class GenerationNotFound(GenerationError):
    """No such generation for this user: also what another user's id looks like."""

    def __init__(self, generation_id: str) -> None:
        self.generation_id = generation_id
        super().__init__(f"generation {generation_id} not found")


class GenerationUnavailable(GenerationError):
    """The provider (FAL, or the vision model for photo-to-prompt) is not configured."""


class VisionUnavailable(GenerationUnavailable):
    """No vision model is configured: a photo can't become a prompt."""


class EmptyPrompt(GenerationError):
    pass


class PromptTooLong(GenerationError):
    def __init__(self, *, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"prompt of {length} characters is over the {limit}-character limit")


class TooManyInFlight(GenerationError):
    """The user already has the most generations running that the operator allows."""

    def __init__(self, limit: int, *, running: int) -> None:
        self.limit = limit
        self.running = running
        super().__init__(f"{running} generations in flight, at most {limit} allowed")


class AvatarNotReady(GenerationError):
    """The chosen avatar is gone, not the user's, or not trained."""


class WrongGenerationStatus(GenerationError):
    def __init__(self, status: str) -> None:
        self.status = status
        super().__init__(f"generation is {status}")


class FreeRegenerationUnavailable(GenerationError):
    """No defect was found, or the free regeneration was already used."""


class InvalidRequest(GenerationError, ValueError):
    """A request no button of ours makes (an unknown ratio, an image count out of range)."""


class GenerationFailed(GenerationError):
    """The provider ran the job and it failed, or its result (or an image of it) is gone."""
