"""What a feature knows of work run on a provider's job queue (FAL today): a submission, its
state, and the ways it can fail. Providers raise these; features decide what each means for the
user and the money, without knowing which provider ran the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

JsonDict = dict[str, Any]


class RemoteError(Exception):
    """Base of every failure of a provider's queue. Messages never contain an API key."""


class RemoteRefused(RemoteError):
    """The provider refused a submission (4xx): nothing was queued and nothing will be charged.

    ``detail`` is the provider's own explanation (for a 422, the list of invalid fields).
    """

    def __init__(self, status_code: int, message: str, detail: Any = None) -> None:
        super().__init__(f"FAL refused the request ({status_code}): {message}")
        self.status_code = status_code
        self.message = message
        self.detail = detail


class RemoteAuthFailed(RemoteRefused):
    """401/403: the provider key is missing, wrong or lacks permission: an operator problem, not the user's."""


class RemoteUnavailable(RemoteError):
    """The provider could not be reached or answered 5xx/429 (after retries on idempotent calls): try later.

    ``maybe_submitted`` is true only for a submission whose outcome is unknown (the request may
    have been sent and queued before the connection broke); see ``providers.fal.FalClient.submit``.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, maybe_submitted: bool = False
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.maybe_submitted = maybe_submitted


class RemoteFailed(RemoteError):
    """The job ran and failed: the result endpoint returned the model's error."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.detail = detail


class RemoteNotFound(RemoteError):
    """The provider does not know this request (wrong endpoint, or the result has expired)."""


class RemoteNotReady(RemoteError):
    """The result was asked for before the job completed."""


class RemoteMalformedOutput(RemoteError):
    """A completed job's output lacks what the parser needs."""


# ----------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class RemoteSubmission:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


class RemoteState(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    state: RemoteState
    queue_position: int | None = None
    logs: tuple[JsonDict, ...] = ()
    # Present on a completed request that failed (newer queue versions report it here too);
    # the result endpoint stays the authority on success or failure.
    error: str | None = None
    error_type: str | None = None
    metrics: JsonDict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state is RemoteState.COMPLETED


class CancelOutcome(StrEnum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"  # removed from the queue, or the runner was told
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"
    OK = "OK"


@dataclass(frozen=True, slots=True)
class RemoteWebhook:
    """A verified notice from the provider that a job ended, with its output or its error."""

    request_id: str
    status: Literal["OK", "ERROR"]
    payload: dict[str, Any] | None
    error: str | None = None
    gateway_request_id: str | None = None
    # Set when the provider could not serialise the output into the webhook: fetch the result instead.
    payload_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK"
