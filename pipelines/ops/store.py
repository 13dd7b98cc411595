"""The operational database (API keys, audit log, segments, pushes, events, alerts): one
SQLAlchemy metadata for every table, its schema kept by Alembic migrations, SQLite (embedded
default) or PostgreSQL.

Every store opens its database with `ops_engine`, which brings the schema to the newest
migration the first time a process opens a URL (`cdp db upgrade` does the same on demand), under
a lock so that several workers starting at once migrate once: a PostgreSQL advisory lock inside
the migration's transaction, a file lock next to a SQLite file.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock
from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Names for constraints and indexes, so migrations can refer to them on every database.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)
_ADVISORY_LOCK = 7_352_001  # pg_advisory_xact_lock key: "the CDP ops schema is migrating"
_migrated: set[str] = set()
_migrating = threading.Lock()


def ops_engine(url: str) -> Engine:
    """An engine for `url` whose database is at the newest schema. SQLite runs in WAL mode with
    synchronous=NORMAL (readers never block the audit writer; a commit costs no fsync, and a
    crash of the OS, not of the process, can lose only the last commits) and waits up to 10 s
    for a lock held by another worker."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    key = engine.url.render_as_string(hide_password=False)
    with _migrating:
        if key not in _migrated:
            upgrade(engine)
            _migrated.add(key)
    return engine


def alembic_config() -> Config:
    """Alembic's configuration for the ops schema (no alembic.ini: the scripts ship with the
    package)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head() -> str:
    """The newest migration's revision."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, f"no migrations in {MIGRATIONS}"
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database to `revision` (default the newest); returns the revision it is at.
    A database made before migrations existed is adopted: the first migration creates only the
    tables it lacks."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    on_file = database is not None and database != ":memory:"
    lock = FileLock(f"{database}.migrate.lock", timeout=120) if on_file else nullcontext()
    with lock, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current(engine)


STORES = (
    "pipelines.ops.audit",
    "pipelines.activation.events",
    "pipelines.ops.keys",
    "pipelines.activation.push",
    "pipelines.activation.segment_store",
    "pipelines.ops.status",
)


def store_modules() -> None:
    """Import every module that declares ops tables (they register on `metadata`)."""
    for name in STORES:
        importlib.import_module(name)


def revision(message: str, folder: Path) -> Path:
    """Write a new migration for what the tables declare beyond the newest migration (Alembic
    autogenerate against a scratch SQLite database at head, in `folder`); returns its file."""
    engine = ops_engine(f"sqlite:///{folder / 'scratch.sqlite'}")
    with engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        cfg.attributes["autogenerate"] = True
        script = command.revision(cfg, message=message, autogenerate=True)
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


def utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def jsonable(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored row for a JSON answer: every time as ISO-8601 with its UTC offset, the same
    from SQLite (naive) and PostgreSQL (aware)."""
    return {k: utc(v).isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
