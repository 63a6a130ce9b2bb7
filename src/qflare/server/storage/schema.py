"""Bring a database to the current schema with Alembic, in place (``migrations/``).

* a new database: every migration runs (``0001`` baseline, then each change);
* a database from before migrations existed (no ``alembic_version`` table): it is stamped with the
  revision its tables match, then upgraded;
* a migrated database: upgraded from its recorded revision.

The audit ledger's tables (``SqlLogStore``) are migrated too since ``0003``; the previous release created
them outside Alembic, and ``0003`` keeps them (and the log in them) when they are there.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect

__all__ = ["HEAD", "current_revision", "upgrade_schema"]

SCRIPTS = "qflare.server.storage:migrations"


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPTS)
    cfg.attributes["connection"] = conn
    return cfg


def _head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPTS)
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


HEAD = _head()


def _legacy_revision(conn: Connection) -> str | None:
    """The revision a pre-migration database matches (``None``: an empty database)."""
    insp = inspect(conn)
    tables = set(insp.get_table_names())
    if "devices" not in tables:
        return None
    columns = {c["name"] for c in insp.get_columns("model_versions")}
    return "0002" if "signature" in columns else "0001"


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_schema(engine: Engine) -> None:
    """Upgrade ``engine``'s database to :data:`HEAD` (a no-op when it is there already)."""
    with engine.begin() as conn:
        cfg = _config(conn)
        if MigrationContext.configure(conn).get_current_revision() is None:
            legacy = _legacy_revision(conn)
            if legacy is not None:
                command.stamp(cfg, legacy)
        command.upgrade(cfg, "head")
