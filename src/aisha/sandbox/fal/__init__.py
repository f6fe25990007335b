"""The fake FAL queue server, split by concern; see :mod:`aisha.sandbox.fake_fal`."""

from aisha.sandbox.fal.models import FakeFalJob, WebhookDelivery, png_bytes, sign_webhook
from aisha.sandbox.fal.server import FakeFalServer

__all__ = [
    "FakeFalJob",
    "FakeFalServer",
    "WebhookDelivery",
    "png_bytes",
    "sign_webhook",
]
