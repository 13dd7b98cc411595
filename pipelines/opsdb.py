"""The operational database (API keys, audit log; segments and subscriptions later): one
SQLAlchemy engine per URL, with SQLite set up for a concurrent server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine


def ops_engine(url: str) -> Engine:
    """An engine for `url`. SQLite runs in WAL mode with synchronous=NORMAL (readers never
    block the audit writer; a commit costs no fsync, and a crash of the OS, not of the process,
    can lose only the last commits) and waits up to 10 s for a lock held by another worker."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

    return engine


def utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)
