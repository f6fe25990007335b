"""Aisha: a Telegram bot selling AI avatars, image generation and transcription for credits."""

from aisha.aiogram_models import defer_aiogram_builds

__version__ = "0.1.0"

defer_aiogram_builds()  # before any of our modules imports aiogram
