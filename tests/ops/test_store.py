"""The ops store's schema is kept by migrations on SQLite and PostgreSQL alike: a new database is
migrated to exactly the declared tables, a database from before migrations is adopted with its
rows, workers opening it at once migrate it once, and `cdp db` shows and moves the revision."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

from pipelines.activation.segment_store import SegmentStore
from pipelines.cli.main import app
from pipelines.ops.keys import KeyStore, api_keys
from pipelines.ops.store import current, head, metadata, ops_engine, store_modules

pytestmark = pytest.mark.ops


def test_a_new_database_is_migrated_to_exactly_the_declared_tables(ops_url: str) -> None:
    engine = ops_engine(ops_url)
    assert current(engine) == head()
    store_modules()
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
    assert set(inspect(engine).get_table_names()) == {*metadata.tables, "alembic_version"}


def test_a_database_from_before_migrations_is_adopted_with_its_rows(ops_url: str) -> None:
    """Earlier versions created each store's tables when it first opened the database: here only
    the key store had run. Opening it now adds the missing tables and keeps the key."""
    old = create_engine(ops_url)
    metadata.create_all(old, tables=[api_keys])
    with old.begin() as conn:  # a key issued then: cdp_<key id>_<secret>, the secret hashed
        conn.execute(
            api_keys.insert().values(
                key_id="a1b2c3",
                secret_sha256=hashlib.sha256(b"s3cret").hexdigest(),
                name="CRM",
                role="steward",
                created_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
        )
    old.dispose()

    keys = KeyStore(ops_url)  # opens through ops_engine: migrates
    caller = keys.verify("cdp_a1b2c3_s3cret")
    assert caller is not None and (caller.name, caller.role) == ("CRM", "steward")
    assert current(keys.engine) == head()
    segments = SegmentStore(ops_url)  # a table the old database never had
    assert segments.create("Churners", "marketing", {"all": []}, "k1").version == 1


def _open(url: str) -> str | None:
    return current(ops_engine(url))


def test_workers_opening_a_new_database_at_once_migrate_it_once(ops_url: str) -> None:
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        revisions = pool.map(_open, [ops_url] * 4)
    assert revisions == [head()] * 4
    with create_engine(ops_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


def test_cdp_db_shows_and_moves_the_revision(ops_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "CDP_DATA_ROOT": str(tmp_path), "CDP_API_DATABASE_URL": ops_url}
    runner = CliRunner()
    shown = runner.invoke(app, ["db", "current"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "never migrated" in shown.output
    moved = runner.invoke(app, ["db", "upgrade"], env=env)
    assert moved.exit_code == 0, moved.output
    assert f"empty -> {head()}" in moved.output
    assert f"at {head()}" in runner.invoke(app, ["db", "current"], env=env).output
