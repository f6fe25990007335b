"""refunds asked a bounded number of times

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 14:00:00.000000

`payments.refund_asks` counts the refundStarPayment calls of the open refund that got no answer;
after the last one the sweep stops asking and `payments.refund_given_up_at` says since when the
refund waits for the operator.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refund_asks", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("refund_given_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("refund_given_up_at")
        batch_op.drop_column("refund_asks")
