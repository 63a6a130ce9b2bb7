"""Alembic: a new database gets the ORM's schema; one made by the previous release upgrades in place."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, inspect

from qflare.server.storage import Repository, ledger_store
from qflare.server.storage.schema import HEAD, SCRIPTS, current_revision, upgrade_schema
from qflare.server.storage.tables import Base
from tests.server.pg import fresh_schema

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "schema_340eaec.sql"
LEDGER_TABLES = ["ledger_entries", "ledger_tiles", "ledger_checkpoints"]  # under Alembic since 0003


def _alembic(engine: Engine, step: Callable[[Config, str], None], revision: str) -> None:
    """Run an Alembic ``command.upgrade`` / ``command.downgrade`` to ``revision`` on ``engine``."""
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", SCRIPTS)
        cfg.attributes["connection"] = conn
        step(cfg, revision)


def _schema_diff(url: str) -> list[object]:
    """What differs between the database and the ORM (every table, the ledger's included)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    return list(diff)


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


# --- 0003: the ledger's tables, created outside Alembic by the previous release (0002) ------------------


def _previous_release(url: str, *, with_ledger: bool) -> None:
    """A database as the previous release left it: migrated to 0002, and, when its ledger was on, the
    ledger tables made by its ``SqlLogStore`` (``create_all``) holding a log of 3 entries and a checkpoint."""
    engine = create_engine(url)
    _alembic(engine, command.upgrade, "0002")
    if with_ledger:
        tables = [Base.metadata.tables[t] for t in LEDGER_TABLES]
        Base.metadata.create_all(engine, tables=tables)
        with engine.begin() as c:
            c.execute(insert(tables[0]), [{"idx": i, "entry": b"e%d" % i, "leaf_hash": bytes([i]) * 32}
                                          for i in range(3)])
            c.execute(insert(tables[1]).values(level=0, tile_index=0, data=b"t" * 96))
            c.execute(insert(tables[2]).values(size=3, note=b"checkpoint note"))
    engine.dispose()


def _upgrade_from_the_previous_head(url: str, *, with_ledger: bool) -> None:
    # Prepare
    _previous_release(url, with_ledger=with_ledger)
    engine = create_engine(url)
    assert current_revision(engine) == "0002"
    assert (set(LEDGER_TABLES) <= set(inspect(engine).get_table_names())) is with_ledger
    engine.dispose()
    # Execute: the server (or `qflare ledger verify`) opens it
    repo = Repository(url)
    store = ledger_store.SqlLogStore(repo.engine)
    # Assert: at HEAD, the ORM's schema exactly, the old log intact, and the store appends after it
    assert current_revision(repo.engine) == HEAD == "0006"
    if with_ledger:
        assert store.size() == 3 and store.read_entries(0, 3) == [b"e0", b"e1", b"e2"]
        latest = store.latest_checkpoint()
        assert latest is not None and (latest.size, latest.note) == (3, b"checkpoint note")
    start = store.size()
    store.append(start, [b"new"], [bytes(32)], {(0, 0): bytes(32) * (start + 1)})
    store.add_checkpoint(start + 1, b"next")
    assert store.read_entries(start, start + 1) == [b"new"] and len(store.read_checkpoints()) == 1 + with_ledger
    repo.close()
    assert _schema_diff(url) == []


@pytest.mark.parametrize("with_ledger", [True, False], ids=["with-ledger", "ledger-off"])
def test_the_ledger_tables_come_under_alembic_on_sqlite(tmp_path: Path, with_ledger: bool) -> None:
    _upgrade_from_the_previous_head(f"sqlite:///{tmp_path / 'prev.db'}", with_ledger=with_ledger)


@pytest.mark.parametrize("with_ledger", [True, False], ids=["with-ledger", "ledger-off"])
def test_the_ledger_tables_come_under_alembic_on_postgresql(with_ledger: bool) -> None:
    with fresh_schema("qflare_migrate") as url:
        _upgrade_from_the_previous_head(url, with_ledger=with_ledger)


def test_a_store_on_a_url_migrates_its_database_and_downgrade_drops_the_ledger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = ledger_store.SqlLogStore(url)  # `qflare ledger verify --db`, the benches: no Repository
    assert current_revision(store.engine) == HEAD and store.size() == 0
    _alembic(store.engine, command.downgrade, "0002")
    assert not set(LEDGER_TABLES) & set(inspect(store.engine).get_table_names())
    store.close()


# --- 0004: the ledger outbox ------------------------------------------------------------------------------


def test_a_0003_database_gains_the_ledger_outbox_and_downgrade_removes_it(tmp_path: Path) -> None:
    # Prepare: a database of the previous head (0003)
    url = f"sqlite:///{tmp_path / 'prev.db'}"
    engine = create_engine(url)
    _alembic(engine, command.upgrade, "0003")
    assert "ledger_outbox" not in inspect(engine).get_table_names()
    engine.dispose()

    # Execute
    repo = Repository(url)

    # Assert: at HEAD with the ORM's schema; the outbox works; a downgrade to 0003 drops only it
    assert current_revision(repo.engine) == HEAD and _schema_diff(url) == []
    with repo.claim_ledger_entries() as entries:
        assert entries == []
    _alembic(repo.engine, command.downgrade, "0003")
    tables = set(inspect(repo.engine).get_table_names())
    assert "ledger_outbox" not in tables and {"updates", "ledger_entries"} <= tables
    repo.close()


def test_0005_adds_the_enrolled_example_cap_and_keeps_the_devices(tmp_path: Path) -> None:
    # Prepare: a 0004 database with a device
    url = f"sqlite:///{tmp_path / 'prev.db'}"
    engine = create_engine(url)
    _alembic(engine, command.upgrade, "0004")
    with engine.begin() as conn:
        conn.exec_driver_sql("insert into devices (device_id, status, public_key, fingerprint, key_source, created_at)"
                             " values ('edge_1', 'active', x'00', 'fp', 'mlkem', 1.0)")
    engine.dispose()

    # Execute
    repo = Repository(url)

    # Assert
    device = repo.get_device("edge_1")
    assert device is not None and device.max_examples is None and _schema_diff(url) == []
    repo.close()


def test_0006_adds_the_reported_local_dp_epsilon_and_keeps_the_updates(tmp_path: Path) -> None:
    # Prepare: a 0005 database with one accepted update
    url = f"sqlite:///{tmp_path / 'prev.db'}"
    engine = create_engine(url)
    _alembic(engine, command.upgrade, "0005")
    with engine.begin() as conn:
        conn.exec_driver_sql("insert into devices (device_id, status, public_key, fingerprint, key_source, created_at)"
                             " values ('edge_1', 'active', x'00', 'fp', 'mlkem', 1.0)")
        conn.exec_driver_sql("insert into rounds (round_id, status, base_version, selected, opened_at, deadline_at)"
                             " values (1, 'open', 0, '[\"edge_1\"]', 1.0, 2.0)")
        conn.exec_driver_sql("insert into updates (round_id, device_id, num_examples, train_loss, sha256, size_bytes,"
                             " blob, received_at) values (1, 'edge_1', 10, 0.5, 'ab', 3, x'010203', 1.5)")
    engine.dispose()

    # Execute
    repo = Repository(url)

    # Assert
    [update] = repo.round_updates(1)
    assert (update.device_id, update.num_examples, update.dp_epsilon) == ("edge_1", 10, None)
    assert _schema_diff(url) == []
    repo.close()
