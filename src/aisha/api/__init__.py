"""The HTTP adapter (aiohttp.web): Telegram's and FAL's webhooks, health, metrics, signed file links.

Telegram's webhook path lives here, apart from the routes, so that the runtime can give it to
`setWebhook` without a worker (which serves no HTTP) loading the server or the routes."""

TELEGRAM_WEBHOOK_PATH = "/telegram/webhook"  # the route of api/telegram.py, and the URL Telegram is given
