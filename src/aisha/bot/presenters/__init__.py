"""Presenters: what each feature shows the user (texts, HTML, keyboards, callback-data shapes)."""
