"""Alembic migrations of the server's database (``qflare.server.storage.schema.upgrade_schema`` runs them)."""
