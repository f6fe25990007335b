"""Messages owed to users: written with the change they tell about, sent after it commits."""

from aisha.notices.models import OwedMessage
from aisha.notices.service import NoticeRules, NoticeService, notice_key

__all__ = ["NoticeRules", "NoticeService", "OwedMessage", "notice_key"]
