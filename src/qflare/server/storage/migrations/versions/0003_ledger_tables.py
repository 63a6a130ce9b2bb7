"""The audit ledger's tables (entries, hash tiles, checkpoints) come under migrations.

Until this revision ``SqlLogStore`` created them itself on start (``create_all``), so a database of the
previous release may hold them already, with the log in them: they are kept as they are (their columns
are those below) and only the missing ones are created. Downgrading drops them, and the log with them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("ledger_entries", "ledger_tiles", "ledger_checkpoints")


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "ledger_entries" not in existing:
        op.create_table(
            "ledger_entries",
            sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
            sa.Column("entry", sa.LargeBinary(), nullable=False),
            sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        )
        op.create_index("ix_ledger_entries_leaf_hash", "ledger_entries", ["leaf_hash"])
    if "ledger_tiles" not in existing:
        op.create_table(
            "ledger_tiles",
            sa.Column("level", sa.Integer(), primary_key=True, autoincrement=False),
            sa.Column("tile_index", sa.BigInteger(), primary_key=True, autoincrement=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
        )
    if "ledger_checkpoints" not in existing:
        op.create_table(
            "ledger_checkpoints",
            sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("note", sa.LargeBinary(), nullable=False),
        )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
