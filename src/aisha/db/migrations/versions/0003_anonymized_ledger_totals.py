"""anonymized ledger totals

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 06:55:48.269474
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENTRY_KINDS = ("bonus", "topup", "hold", "capture", "release", "charge", "refund", "adjustment")


def upgrade() -> None:
    op.create_table(
        "anonymized_ledger_totals",
        sa.Column(
            "kind", sa.Enum(*ENTRY_KINDS, name="entrykind", native_enum=False, length=16), nullable=False
        ),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("users", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_anonymized_ledger_totals")),
    )


def downgrade() -> None:
    op.drop_table("anonymized_ledger_totals")
