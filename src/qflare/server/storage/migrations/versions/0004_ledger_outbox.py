"""The ledger outbox: entries committed with their fact, appended to the audit log afterwards.

An accepted update's ``update_accepted`` entry (the enclave's signed bytes) and a closed round's
``round_closed`` / ``aggregate_published`` / ``round_failed`` entries are written in the same transaction
as the update or the close, so a server killed before it appends them to the log appends them at its
next start (``AuditLog.drain``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_outbox",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_outbox")
