"""Updates carry the local-DP epsilon their device reports (``updates.dp_epsilon``; docs/privacy.md).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("dp_epsilon", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("dp_epsilon")
