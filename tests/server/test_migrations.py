"""Alembic: a new database gets the ORM's schema; one made by the previous release upgrades in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from qflare.server.storage import Repository
from qflare.server.storage.schema import HEAD, current_revision, upgrade_schema
from qflare.server.storage.tables import Base

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "schema_340eaec.sql"
LEDGER_TABLES = {"ledger_checkpoints", "ledger_entries", "ledger_tiles"}  # created by SqlLogStore, not migrated


def _schema_diff(url: str) -> list[object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()

    def ledger(d: object) -> bool:  # a diff item names its table as a str, a Table, or an object's .table
        item = d[0] if isinstance(d, list) else d
        for part in item if isinstance(item, tuple) else (item,):
            table = getattr(part, "table", part)
            if getattr(table, "name", table) in LEDGER_TABLES:
                return True
        return False

    return [d for d in diff if not ledger(d)]


def test_a_new_database_is_migrated_to_exactly_the_orm_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    repo = Repository(url)
    assert current_revision(repo.engine) == HEAD
    repo.close()
    assert _schema_diff(url) == []


def test_a_database_of_the_previous_release_upgrades_in_place(tmp_path: Path) -> None:
    # Prepare: the previous release's database, with data in it.
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(FIXTURE.read_text())
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(model_versions)")}
    assert "signature" not in cols
    # Execute: the server opens it.
    repo = Repository(f"sqlite:///{path}")
    # Assert: the schema is the current one, the data is all there, and the new column works.
    assert current_revision(repo.engine) == HEAD
    assert [d.device_id for d in repo.list_devices()] == ["edge_01"]
    model = repo.get_model(1)
    assert model is not None and model.signature is None and model.round_id == 1
    rnd = repo.get_round(1)
    assert rnd is not None and rnd.metrics == {"accuracy": 0.5} and rnd.status == "aggregated"
    assert repo.count_updates() == 1 and repo.count_events("request_rejected") == 1
    repo.close()
    assert _schema_diff(f"sqlite:///{path}") == []


def test_upgrading_twice_changes_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade_schema(engine)
    upgrade_schema(engine)
    assert current_revision(engine) == HEAD
    engine.dispose()
