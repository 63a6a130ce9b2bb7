"""Alembic environment: the caller passes an open connection (``config.attributes["connection"]``)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# render_as_batch: SQLite alters a table by copying it; Alembic's batch mode does that on SQLite only.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
