"""owed messages; payment refunds as an intent

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 08:30:00.000000

`owed_messages`: a message written with the change it tells about and sent after commit, retried
by the recovery sweep. `payments.refund_attempts` numbers the refunds of a payment (each has its
own ledger keys, so one Telegram refused doesn't block the next) and `payments.refund_shortfall`
keeps the credits a refund made outside the bot couldn't take back. The new payment status
`refunding` needs no DDL (statuses are plain strings).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "owed_messages",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("given_up_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owed_messages")),
        sa.UniqueConstraint("key", name=op.f("uq_owed_messages_key")),
    )
    with op.batch_alter_table("owed_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_owed_messages_sent_at_given_up_at_next_attempt_at"),
            ["sent_at", "given_up_at", "next_attempt_at"],
            unique=False,
        )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refund_attempts", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("refund_shortfall", sa.BigInteger(), server_default="0", nullable=False)
        )
    # A payment refunded before refunds were numbered had one refund: its debit is `refund:<charge>`.
    op.execute("UPDATE payments SET refund_attempts = 1 WHERE status = 'refunded'")


def downgrade() -> None:
    # A payment left 'refunding' keeps that status: its credits are already taken, so neither
    # 'paid' nor 'refunded' would be true. Finish refunds before downgrading.
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("refund_shortfall")
        batch_op.drop_column("refund_attempts")
    with op.batch_alter_table("owed_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_owed_messages_sent_at_given_up_at_next_attempt_at"))
    op.drop_table("owed_messages")
