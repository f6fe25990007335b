"""Refused user preferences."""

from __future__ import annotations


class UnknownLanguage(ValueError):
    """A language the bot does not offer (tampered callback data): nothing was changed."""
