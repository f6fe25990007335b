"""transcripts.claim: which run of the job owns the row

Each run of the transcription job takes the row by bumping `claim`; every later write of that run
is conditional on it, so a second run (or a late one) can never overwrite the first's outcome.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("transcripts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("transcripts", schema=None) as batch_op:
        batch_op.drop_column("claim")
