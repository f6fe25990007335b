"""Aisha: a Telegram bot selling AI avatars, image generation and transcription for credits."""

__version__ = "0.1.0"
