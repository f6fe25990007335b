"""Presenters: how each feature's results and events read to users (texts, HTML, keyboards)."""
