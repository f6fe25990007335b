"""Every table of the product in one metadata, for Alembic and for tests.

A feature's tables live in its own `models.py`; importing this module registers them all on
`Base.metadata` (the migrations' environment and the model-matches-migrations test read it).
"""

from __future__ import annotations

from aisha.admin.models import Broadcast
from aisha.avatars.models import Avatar, AvatarPhoto
from aisha.billing.models import AnonymizedLedgerTotal, CreditAccount, CreditEntry, CreditHold, Payment
from aisha.db.base import Base
from aisha.db.models import FsmRecord, ProcessedUpdate
from aisha.generation.models import ImageGeneration
from aisha.notices.models import OwedMessage
from aisha.transcription.models import Transcript
from aisha.users.models import User

__all__ = [
    "AnonymizedLedgerTotal",
    "Avatar",
    "AvatarPhoto",
    "Base",
    "Broadcast",
    "CreditAccount",
    "CreditEntry",
    "CreditHold",
    "FsmRecord",
    "ImageGeneration",
    "OwedMessage",
    "Payment",
    "ProcessedUpdate",
    "Transcript",
    "User",
]
