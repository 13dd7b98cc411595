"""The audit log: who saw what about which customer, under which purposes and consent state.

Every lookup appends a record. Records are queued and written in batches by one background
thread (a lookup never waits for the database); `close()` writes what is queued before the
process ends, so a clean shutdown loses nothing. SQLite by default, any SQLAlchemy URL.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    select,
)

metadata = MetaData()
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(40), nullable=False),  # lookup | lookup_as_of | segment_push ...
    Column("key_id", String(16), nullable=False),
    Column("channel", String(100)),
    Column("person_id", String(40), index=True),
    Column("purposes", JSON, nullable=False),  # purpose -> consent in force (bool)
    Column("legal_basis", JSON, nullable=False),  # purpose -> basis recorded on the profile
    Column("served", JSON, nullable=False),  # attribute names, never values
    Column("withheld", JSON, nullable=False),  # [{attribute, reason}]
    Column("profile_version", BigInteger),
    Column("snapshot_version", BigInteger),
)


@dataclass(frozen=True)
class AuditRecord:
    kind: str
    key_id: str
    channel: str | None
    person_id: str | None
    purposes: dict[str, bool]
    legal_basis: dict[str, str | None]
    served: list[str]
    withheld: list[dict[str, str]]
    profile_version: int | None
    snapshot_version: int | None
    at: datetime


class AuditLog:
    """Batched, durable audit writes and the steward's queries."""

    def __init__(self, url: str, batch: int = 500, every_s: float = 0.5) -> None:
        self.engine = create_engine(url)
        metadata.create_all(self.engine)
        self._queue: queue.Queue[AuditRecord | threading.Event | None] = queue.Queue()
        self._batch, self._every = batch, every_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        """Start the writer thread unless it runs (again, after a close: an app whose lifespan
        ended and restarted keeps auditing)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def record(self, rec: AuditRecord) -> None:
        self._ensure_writer()
        self._queue.put(rec)

    def _run(self) -> None:
        """Collect up to `batch` records (or what `every_s` brings), write them in one
        transaction; a flush marker is answered once everything before it is written."""
        while True:
            pending: list[AuditRecord] = []
            waiting: list[threading.Event] = []
            stop = False
            try:
                item = self._queue.get(timeout=self._every)
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        waiting.append(item)
                    else:
                        pending.append(item)
                    if stop or len(pending) >= self._batch:
                        break
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if pending:
                with self.engine.begin() as conn:
                    conn.execute(audit_log.insert(), [r.__dict__ for r in pending])
            for done in waiting:
                done.set()
            if stop:
                return

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is written."""
        self._ensure_writer()
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer (clean shutdown loses nothing)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return
            self._queue.put(None)
            self._thread.join()

    def query(
        self, person_id: str, since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        q = select(audit_log).where(audit_log.c.person_id == person_id)
        if since is not None:
            q = q.where(audit_log.c.at >= since)
        if until is not None:
            q = q.where(audit_log.c.at <= until)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(audit_log.c.at, audit_log.c.id)).mappings().all()
        return [json.loads(json.dumps(dict(r), default=str)) for r in rows]
