"""Presentation of each feature: its texts, HTML, keyboards and callback data, and the events
port it implements (what the feature tells the user while a job runs)."""
