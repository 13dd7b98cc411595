"""The audit log: who saw what about which customer, under which purposes and consent state.

Every lookup appends a record. Records are queued and written in batches by one background
thread (a lookup never waits for the database); `close()` writes what is queued before the
process ends, so a clean shutdown loses nothing; a failed write is retried, not dropped. A
record names its disclosure (the attributes served and withheld for one channel and pattern of
consents), stored once. SQLite by default, any SQLAlchemy URL.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    String,
    Table,
    bindparam,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from pipelines.ops.store import jsonable, metadata, ops_engine
from pipelines.profile.consent import Disclosure

log = logging.getLogger(__name__)

audit_records = Table(
    "audit_records",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", String(40), nullable=False),  # lookup | lookup_as_of | segment_push ...
    Column("key_id", String(16), nullable=False),
    Column("channel", String(100)),
    Column("person_id", String(40), index=True),
    Column("disclosure_id", String(40), nullable=False),
    Column("profile_version", BigInteger),
    Column("snapshot_version", BigInteger),
)
# The consent state used and what was served and withheld (attribute names, never values), once
# per channel and consent state: a record names its disclosure instead of repeating ~60 names.
audit_disclosures = Table(
    "audit_disclosures",
    metadata,
    Column("disclosure_id", String(40), primary_key=True),
    Column("purposes", JSON, nullable=False),  # purpose -> consent in force (bool)
    Column("legal_basis", JSON, nullable=False),  # purpose -> basis recorded on the profile
    Column("served", JSON, nullable=False),
    Column("withheld", JSON, nullable=False),  # [{attribute, reason, purposes}]
)


class AuditRecord(NamedTuple):
    """One lookup (a tuple: it is built on the request path)."""

    kind: str
    key_id: str
    channel: str | None
    person_id: str | None
    disclosure: Disclosure
    profile_version: int | None
    snapshot_version: int | None
    at: datetime


RECORD_COLUMNS = [c for c in audit_records.c if c.name != "id"]
MULTI_ROWS = 100  # records per INSERT statement (8 parameters each; SQLite allows 32766)


class AuditLog:
    """Batched, durable audit writes and the steward's queries."""

    def __init__(self, url: str, batch: int = 500, every_s: float = 0.1) -> None:
        self.engine = ops_engine(url)
        # The record insert as the driver's own SQL: executemany over plain tuples, without
        # SQLAlchemy's per-row parameter processing (the writer shares the GIL with requests).
        dialect = self.engine.dialect
        insert = audit_records.insert().values(
            {c.name: bindparam(c.name, type_=c.type) for c in RECORD_COLUMNS}
        )
        sql = str(insert.compile(dialect=dialect))
        self._insert_head, self._one_row = sql.split(" VALUES ", 1)
        self._positional = dialect.positional
        at_type = audit_records.c.at.type.dialect_impl(dialect)
        self._at = at_type.bind_processor(dialect) or (lambda v: v)
        # records, flush markers (answered when written) and a stop marker (None), in order
        self._queue: collections.deque[AuditRecord | threading.Event | None] = collections.deque()
        self._wake = threading.Event()
        self._batch, self._every = batch, every_s
        self._known: set[str] = set()  # disclosure ids stored (by any process)
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
        """Queue a record (a deque append: no lock, no wake-up of the writer per record)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._ensure_writer()
        self._queue.append(rec)
        if len(self._queue) >= self._batch:
            self._wake.set()

    def _run(self) -> None:
        """Every `every_s` (sooner when `batch` records wait, or on flush and close), write what
        is queued in transactions of up to `batch` records; a flush marker is answered once
        everything before it is written."""
        while True:
            self._wake.wait(self._every)
            self._wake.clear()
            pending: list[AuditRecord] = []
            stop = False
            while self._queue and not stop:
                item = self._queue.popleft()
                if isinstance(item, AuditRecord):
                    pending.append(item)
                    if len(pending) >= self._batch:
                        self._write_until_stored(pending, stopping=False)
                        pending = []
                    continue
                if pending:
                    self._write_until_stored(pending, stopping=item is None)
                    pending = []
                if item is None:
                    stop = True
                else:
                    item.set()
            if pending:
                self._write_until_stored(pending, stopping=False)
            if stop:
                return

    def _write_until_stored(self, pending: list[AuditRecord], stopping: bool) -> None:
        """Retry a failed write (database restarting, a concurrent writer storing the same
        disclosure) with backoff; records stay queued meanwhile. Only a shutdown gives up, after
        a few attempts, and says how many records it could not store."""
        for attempt in itertools.count(1):
            try:
                self._write(pending)
                return
            except SQLAlchemyError as exc:
                if stopping and attempt >= 5:
                    log.error("audit: %d records not stored at shutdown: %s", len(pending), exc)
                    return
                log.warning("audit: write failed (attempt %d), retrying: %s", attempt, exc)
                time.sleep(min(0.1 * 2**attempt, 5.0))

    def _write(self, pending: list[AuditRecord]) -> None:
        """One transaction: the disclosures this process has not stored yet, then the records."""
        new = {r.disclosure.id: r.disclosure for r in pending if r.disclosure.id not in self._known}
        with self.engine.begin() as conn:
            if new:
                stored = conn.execute(
                    select(audit_disclosures.c.disclosure_id).where(
                        audit_disclosures.c.disclosure_id.in_(new)
                    )
                ).scalars()
                missing = new.keys() - set(stored)
                if missing:
                    conn.execute(
                        audit_disclosures.insert(),
                        [
                            {
                                "disclosure_id": d.id,
                                "purposes": d.consent_used,
                                "legal_basis": d.legal_basis,
                                "served": sorted(d.served),
                                "withheld": d.withheld_public,
                            }
                            for i, d in new.items()
                            if i in missing
                        ],
                    )
            at = self._at
            rows = [
                (
                    at(r.at),
                    r.kind,
                    r.key_id,
                    r.channel,
                    r.person_id,
                    r.disclosure.id,
                    r.profile_version,
                    r.snapshot_version,
                )
                for r in pending
            ]
            if self._positional:
                # one multi-row INSERT: sqlite3's executemany releases and re-takes the GIL
                # for every row, which stalls the request loop far more than the work itself
                for i in range(0, len(rows), MULTI_ROWS):
                    chunk = rows[i : i + MULTI_ROWS]
                    conn.exec_driver_sql(
                        f"{self._insert_head} VALUES {', '.join([self._one_row] * len(chunk))}",
                        tuple(itertools.chain(*chunk)),
                    )
            else:
                names = [c.name for c in RECORD_COLUMNS]
                conn.execute(
                    audit_records.insert(), [dict(zip(names, r, strict=True)) for r in rows]
                )
        self._known.update(new)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything recorded so far is written."""
        self._ensure_writer()
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer (clean shutdown loses nothing)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return
            self._queue.append(None)
            self._wake.set()
            self._thread.join()

    def query(
        self, person_id: str, since: datetime | None, until: datetime | None
    ) -> list[dict[str, Any]]:
        r, d = audit_records.c, audit_disclosures.c
        q = (
            select(
                *(c for c in r if c.name != "disclosure_id"),
                d.purposes,
                d.legal_basis,
                d.served,
                d.withheld,
            )
            .join_from(audit_records, audit_disclosures, r.disclosure_id == d.disclosure_id)
            .where(r.person_id == person_id)
        )
        if since is not None:
            q = q.where(r.at >= since)
        if until is not None:
            q = q.where(r.at <= until)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(r.at, r.id)).mappings().all()
        return [json.loads(json.dumps(jsonable(row), default=str)) for row in rows]
