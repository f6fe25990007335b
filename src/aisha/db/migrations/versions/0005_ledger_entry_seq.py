"""ledger entry sequence numbers

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 10:45:00.000000

Each account counts its entries (`credit_accounts.last_seq`, bumped by the balance UPDATE) and
each entry carries its number (`credit_entries.seq`, unique per user): the ledger's order no
longer depends on clocks. Existing entries are numbered 1..n per user in the old order
(created_at, id), and each account's last_seq is set to its newest entry's number.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credit_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_seq", sa.BigInteger(), server_default="0", nullable=False))
    with op.batch_alter_table("credit_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))

    # Both dialects take a correlated UPDATE over a window-function subquery.
    op.execute(
        """
        UPDATE credit_entries SET seq = (
            SELECT numbered.seq FROM (
                SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY created_at, id) AS seq
                FROM credit_entries
            ) AS numbered
            WHERE numbered.id = credit_entries.id
        )
        """
    )
    op.execute(
        """
        UPDATE credit_accounts SET last_seq = COALESCE(
            (SELECT MAX(seq) FROM credit_entries WHERE credit_entries.user_id = credit_accounts.user_id),
            0
        )
        """
    )

    with op.batch_alter_table("credit_entries", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_credit_entries_user_id_seq"), ["user_id", "seq"])


def downgrade() -> None:
    with op.batch_alter_table("credit_entries", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_credit_entries_user_id_seq"), type_="unique")
        batch_op.drop_column("seq")
    with op.batch_alter_table("credit_accounts", schema=None) as batch_op:
        batch_op.drop_column("last_seq")
