"""PostgreSQL for tests: the local server at 127.0.0.1:5432 (trust auth, database ``test``), one fresh
schema per test so tests never see each other's rows; skipped when no server answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_available() -> bool:
    try:
        with create_engine(PG_URL, connect_args={"connect_timeout": 2}).connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception:
        return False


@contextmanager
def fresh_schema(prefix: str = "qflare_test") -> Iterator[str]:
    """A database URL whose search path is a new, empty schema (dropped afterwards); skips without PostgreSQL."""
    if not pg_available():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
