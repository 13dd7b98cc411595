"""Retention (conf/retention.yaml): each named table keeps rows for its days, by its own time
column. Raw lines age from their ingestion against the wall clock; events from when they
happened against the data clock (`data_clock`: a replayed or generated operator's old events
are not all deleted at once). The status part reads file statistics only (no JVM, for the API);
`apply_retention` deletes through the Spark lake and vacuums."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import delete

from pipelines.config import ConfigError, Settings
from pipelines.lakehouse.catalog import event_time, every_table, stream_appended
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.audit import audit_records
from pipelines.ops.health import consumed
from pipelines.ops.status import data_clock
from pipelines.ops.store import ops_engine

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipelines.lakehouse.lake import Lake

# Columns that say when a line reached us (wall-clock times), not when its event happened.
INGEST_TIMES = frozenset({"ingest_ts", "last_seen", "first_ingest_ts"})
AUDIT = "ops store: audit_records"


@dataclass(frozen=True)
class TableRetention:
    """One table's retention now: rows with `column` before `cutoff` are past it; `oldest` is
    the table's oldest value of `column` (None: no rows)."""

    table: str
    column: str
    days: float
    clock: str  # "wall clock" or "data clock"
    cutoff: datetime
    oldest: datetime | None

    @property
    def ok(self) -> bool:
        return self.oldest is None or self.oldest >= self.cutoff

    @property
    def oldest_days(self) -> float | None:
        """How old the oldest row is against the table's clock, in days."""
        if self.oldest is None:
            return None
        now = self.cutoff + timedelta(days=self.days)
        return round((now - self.oldest).total_seconds() / 86400, 2)


def _column(table: str, settings: Settings) -> str:
    where = f"{settings.conf_dir / 'retention.yaml'}: tables.{table}"
    if table not in every_table(settings):
        raise ConfigError(f"{where}: no such table; one of {every_table(settings)}")
    column = event_time(table)
    if column is None:
        raise ConfigError(f"{where}: {table} has no time column to age its rows by; remove it")
    return column


def _oldest(lake: LakeReader, table: str, column: str) -> datetime | None:
    """The smallest `column` value, from the Delta log's per-file statistics (no data read)."""
    dt = lake.table(table)
    if dt is None:
        return None
    files = pa.table(dt.get_add_actions(flatten=True))
    stat = f"min.{column}"
    if not files.num_rows:
        return None
    if stat not in files.column_names or files.column(stat).null_count:
        values = lake.read_arrow(table, [column]).column(column)  # no statistics: read it
    else:
        values = files.column(stat)
    oldest = pc.min(values).as_py()
    return oldest if isinstance(oldest, datetime) else None


def retention_status(
    lake: LakeReader, settings: Settings, now: datetime | None = None
) -> list[TableRetention]:
    """Every configured table that exists: its oldest row against its retention."""
    now = now or datetime.now(UTC)
    clock: datetime | None = None
    out = []
    for table, days in settings.retention.tables.items():
        column = _column(table, settings)
        if not lake.exists(table):
            continue
        if column in INGEST_TIMES:
            at, which = now, "wall clock"
        else:
            clock = clock or data_clock(lake, settings, now)
            at, which = clock, "data clock"
        cutoff = at - timedelta(days=days)
        out.append(TableRetention(table, column, days, which, cutoff, _oldest(lake, table, column)))
    return out


@dataclass
class RetentionReport:
    """What a retention run deleted: rows per table, files vacuumed, audit records; tables
    skipped until the next run, and tables whose vacuum waits for their reader."""

    deleted: dict[str, int] = field(default_factory=dict)
    vacuumed: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    vacuum_waits: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _vacuum(
    lake: Lake,
    settings: Settings,
    table: str,
    upto: int | None,
    report: RetentionReport,
    progress: Callable[[str], None],
) -> None:
    """VACUUM `table` after `vacuum_hours`, once its pipeline reader has taken every version up
    to `upto`: the versions it has yet to read still name the files a delete rewrote, so a
    short window waits (files left for the next run) rather than break the stream."""
    done = consumed(lake, settings, table)
    if done is not None and upto is not None and done < upto:
        report.vacuum_waits.append(table)
        progress(f"{table}: vacuum waits until its reader has read version {upto} (at {done})")
        return
    report.vacuumed[table] = n = lake.vacuum(table, settings.retention.vacuum_hours)
    progress(f"{table}: {n} files vacuumed")


def apply_retention(
    lake: Lake,
    settings: Settings,
    *,
    locked: bool,
    progress: Callable[[str], None] = lambda _: None,
    now: datetime | None = None,
) -> RetentionReport:
    """Delete every configured table's rows past their retention, vacuum the files that held
    them (after `vacuum_hours`), and the audit records past `audit_days`. Tables the stream
    only appends to are done while it runs; the others only when the caller holds the identity
    lock (`locked`), else they are skipped and named."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    appended = stream_appended(settings)
    for r in retention_status(lake, settings, now):
        report.cutoffs[r.table] = r.cutoff.isoformat()
        if r.ok:
            report.deleted[r.table] = 0
            continue
        if not locked and r.table not in appended:
            report.skipped.append(r.table)
            progress(f"{r.table}: skipped (the stream holds the identity lock); next run")
            continue
        before = lake.version(r.table)
        n = lake.delete_before(r.table, r.column, r.cutoff, stage="retention")
        report.deleted[r.table] = n
        progress(
            f"{r.table}: {n:,} rows with {r.column} before {r.cutoff:%Y-%m-%d %H:%M} "
            f"({r.days:g} days by the {r.clock}) deleted"
        )
        _vacuum(lake, settings, r.table, before, report, progress)
    # Tables with nothing to delete now may still hold files an earlier run's delete left for
    # their reader to pass: vacuumed once it has.
    done = {*report.vacuumed, *report.vacuum_waits, *report.skipped}
    for table in (t for t in settings.retention.tables if t not in done and lake.exists(t)):
        _vacuum(lake, settings, table, lake.version(table), report, progress)
    if settings.retention.audit_days is not None:
        cutoff = now - timedelta(days=settings.retention.audit_days)
        with ops_engine(settings.database_url).begin() as db:
            gone = db.execute(delete(audit_records).where(audit_records.c.at < cutoff)).rowcount
        report.deleted[AUDIT] = int(gone or 0)
        report.cutoffs[AUDIT] = cutoff.isoformat()
        progress(f"{AUDIT}: {gone or 0:,} records before {cutoff:%Y-%m-%d} deleted")
    return report
