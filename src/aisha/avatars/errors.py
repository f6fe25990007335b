"""Errors of the avatar rules; handlers map them to locale texts."""

from __future__ import annotations


class AvatarError(Exception):
    """Base of every avatar error."""


class AvatarNotFound(AvatarError):
    """No such avatar for this user: missing, deleted, or someone else's (never told apart)."""


class WrongAvatarStatus(AvatarError):
    """The avatar is not in a status that allows the operation (e.g. deleting one in training)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"avatar is {status}")
        self.status = status


class NotEnoughPhotos(AvatarError):
    def __init__(self, *, accepted: int, required: int) -> None:
        super().__init__(f"{accepted} photos accepted, {required} needed")
        self.accepted = accepted
        self.required = required


class InvalidAvatarName(AvatarError):
    """Empty or too long."""


class TrainingUnavailable(AvatarError):
    """Training can't start on this deployment (no FAL key, or no URL FAL could fetch from)."""


class TrainingFailed(AvatarError):
    """The provider ran the training and it failed (or has no result): release the credits."""
