"""Reading the lake without a JVM: every table's snapshot, history, changes and app
transactions through delta-rs (Polars for filtered reads, which pushes predicates down to the
files' statistics). The API, the checks and other engines use this;
`pipelines.lakehouse.lake.Lake` adds the writes (delta-spark) on top.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

# The app id of a multi-source write's table-local progress number.
PROGRESS_APP = "cdp.progress"
PROGRESS_KEPT = 10  # older progress maps kept
PROGRESS_DIR = "_cdp_progress"  # inside the table folder: Delta and VACUUM skip `_` folders


class LakeReader:
    """Delta tables under one root, named `layer.table` (for example `silver.billing`), read."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def uri(self, table: str) -> str:
        layer, _, name = table.partition(".")
        if not layer or not name:
            raise ValueError(f"table name {table!r} must look like 'layer.name'")
        return str(self.root / layer / name)

    def table(self, table: str, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(table), version=version)
        except TableNotFoundError:
            return None

    def _existing(self, table: str, version: int | None = None) -> DeltaTable:
        dt = self.table(table, version)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        return dt

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table))

    def tables(self) -> list[str]:
        """Every Delta table under the root, as `layer.name`."""
        logs = self.root.glob("*/*/_delta_log")
        return sorted(f"{log.parent.parent.name}.{log.parent.name}" for log in logs)

    def file_count(self, table: str) -> int:
        dt = self.table(table)
        return 0 if dt is None else len(dt.file_uris())

    def version(self, table: str) -> int | None:
        dt = self.table(table)
        return None if dt is None else dt.version()

    def committed(self, table: str, app_id: str) -> int | None:
        """Highest app-transaction version committed to `table` by `app_id`, if any."""
        dt = self.table(table)
        return None if dt is None else self._committed(table, dt, app_id)

    def _committed(self, table: str, dt: DeltaTable, app_id: str) -> int | None:
        done = [dt.transaction_version(app_id), self._progress(table).done(dt).get(app_id)]
        return max((v for v in done if v is not None), default=None)

    def rows_written(self, table: str, version: int) -> int:
        """Rows the commit at `version` wrote (its operation metrics), without reading them."""
        dt = self._existing(table)
        for commit in dt.history(dt.version() - version + 1):
            if commit.get("version") == version:
                metrics = commit.get("operationMetrics") or {}
                return int(metrics.get("numOutputRows", 0))
        raise FileNotFoundError(f"{table} has no commit {version} in its log any more")

    def last_metadata(self, table: str) -> dict[str, Any]:
        """The stage metadata of the table's newest commit ({} when it has none)."""
        dt = self.table(table)
        last = dt.history(1) if dt is not None else []
        text = last[0].get("userMetadata") if last else None
        return json.loads(text) if text else {}

    def _progress(self, table: str) -> Progress:
        return Progress(Path(self.uri(table)) / PROGRESS_DIR)

    def read_arrow(
        self,
        table: str,
        columns: list[str] | None = None,
        where: pl.Expr | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """A snapshot (current, or `version`), optionally only the rows matching `where`, read
        with Polars over delta-rs: it pushes the predicate down to the files' statistics."""
        dt = self._existing(table, version)
        frame, schema = self._scan(dt, table, columns, where)
        return frame.collect().to_arrow().cast(schema)

    def read_polars(
        self,
        table: str,
        columns: list[str] | None = None,
        where: pl.Expr | None = None,
        version: int | None = None,
    ) -> pl.DataFrame:
        """A snapshot (current, or `version`; optionally filtered) as a Polars frame: no Arrow
        copy, so a full read of a large table is one copy in memory."""
        dt = self._existing(table, version)
        frame, _ = self._scan(dt, table, columns, where)
        return frame.collect()

    def _scan(
        self, dt: DeltaTable, table: str, columns: list[str] | None, where: pl.Expr | None
    ) -> tuple[pl.LazyFrame, pa.Schema]:
        schema = self._schema(dt)
        frame = pl.scan_delta(self.uri(table), version=dt.version())
        if where is not None:
            frame = frame.filter(where)
        if columns:
            frame = frame.select(columns)
            schema = pa.schema([schema.field(c) for c in columns])
        return frame, schema

    @staticmethod
    def _schema(dt: DeltaTable) -> pa.Schema:
        return pa.schema(dt.schema().to_arrow())

    def arrow_schema(self, table: str) -> pa.Schema:
        return self._schema(self._existing(table))

    def rows(self, table: str) -> int:
        """Rows in the table's current snapshot, from the log's file statistics (no scan)."""
        dt = self.table(table)
        if dt is None:
            return 0
        counts = pa.table(dt.get_add_actions()).column("num_records")
        return int(pa.compute.sum(counts).as_py() or 0)

    def appended(
        self,
        table: str,
        since_version: int | None,
        until_version: int,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """Rows inserted after `since_version` up to `until_version`, read without Spark
        (delta-rs's Change Data Feed): for small increments in processes without a JVM."""
        dt = self._existing(table, until_version)
        schema = self._schema(dt)
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        start = 0 if since_version is None else since_version + 1
        parts = [
            pa.table(
                dt.load_cdf(
                    starting_version=lo,
                    ending_version=hi,
                    columns=[*(columns or schema.names), "_change_type"],
                    predicate="_change_type = 'insert'",
                )
            )
            .select(schema.names)
            .cast(schema)
            for lo, hi in insert_ranges(dt, start, dt.version())
        ]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    def row_changes(self, table: str, after: int, upto: int) -> pl.DataFrame | None:
        """Every row change of the versions after `after` up to `upto` (the Change Data Feed:
        the table's columns plus `_change_type` and `_commit_version`), or None when the range
        cannot be followed change by change: a version rewrote the table (overwrite, restore,
        schema change) or its change files are gone (log retention, VACUUM)."""
        if upto <= after:
            return pl.DataFrame()
        latest = self._existing(table)  # its history starts at the newest commit
        dt = latest if latest.version() == upto else self._existing(table, upto)
        commits = latest.history(latest.version() - after)
        history = [h for h in commits if after < h.get("version", -1) <= upto]
        if len(history) != upto - after or any(not _incremental(h) for h in history):
            return None
        if after >= 0 and dt.schema() != self._existing(table, after).schema():
            return None  # decided before the changes are read
        try:
            reader = dt.load_cdf(starting_version=after + 1, ending_version=upto)
            frame = pl.from_arrow(pa.table(reader))
        except Exception:  # delta-rs raises several kinds for a range it cannot read  # noqa: BLE001
            return None
        if not isinstance(frame, pl.DataFrame):
            return None
        return frame.drop("_commit_timestamp", strict=False)


# Operations whose Change Data Feed lists every row they changed; anything else (an overwrite,
# a restore, a schema change) is read again in full.
_INCREMENTAL_OPS = frozenset(
    {"MERGE", "DELETE", "UPDATE", "OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"}
)


def _incremental(commit: dict[str, Any]) -> bool:
    operation = commit.get("operation")
    if operation == "WRITE":
        mode = (commit.get("operationParameters") or {}).get("mode")
        return mode == "Append"
    return operation in _INCREMENTAL_OPS


class Progress:
    """A table's progress map for writes that advance several app transactions at once.

    Such a write commits with the single app transaction (PROGRESS_APP, n); the map of every
    app's version as of n is written to `n.json` before the commit (atomically, by rename).
    A map whose n never committed is ignored and overwritten by the next attempt, so a crash
    between the two steps loses nothing and replays nothing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, n: int) -> Path:
        return self.folder / f"{n}.json"

    def done(self, dt: DeltaTable | None) -> dict[str, int]:
        n = dt.transaction_version(PROGRESS_APP) if dt is not None else None
        if n is None:
            return {}
        path = self._file(n)
        if not path.exists():
            raise RuntimeError(
                f"{path}: the progress map of committed write {n} is missing; the table's "
                "folder was copied without its _cdp_progress folder"
            )
        return {str(k): int(v) for k, v in json.loads(path.read_text()).items()}

    def prepare(self, dt: DeltaTable | None, txns: dict[str, int]) -> tuple[str, int] | None:
        """The app transaction to commit `txns` with (None: none to record)."""
        if not txns:
            return None
        if len(txns) == 1:
            return next(iter(txns.items()))
        current = dt.transaction_version(PROGRESS_APP) if dt is not None else None
        done = self.done(dt)
        merged = {**done, **{a: max(v, done.get(a, v)) for a, v in txns.items()}}
        n = (current or 0) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{n}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(merged, sort_keys=True))
        tmp.replace(self._file(n))
        return PROGRESS_APP, n

    def settle(self, txn: tuple[str, int] | None) -> None:
        """After the commit of progress number n: maps well before n are no longer read (the
        last few stay for readers holding an older snapshot)."""
        if txn is None or txn[0] != PROGRESS_APP:
            return
        for old in self.folder.glob("*.json"):
            if old.stem.isdigit() and int(old.stem) < txn[1] - PROGRESS_KEPT:
                old.unlink(missing_ok=True)


def insert_ranges(dt: DeltaTable, start: int, until: int) -> list[tuple[int, int]]:
    """The versions `start`..`until` as ranges without DELETE commits: a delete inserts nothing,
    and retention and erasure vacuum its change files (the deleted rows) at once, so a change
    feed read across it would fail on files that are gone."""
    if start > until:
        return []
    deletes = sorted(
        h["version"]
        for h in dt.history(until - start + 1)
        if h.get("operation") == "DELETE" and start <= h["version"] <= until
    )
    ranges, low = [], start
    for v in deletes:
        if v > low:
            ranges.append((low, v - 1))
        low = v + 1
    if low <= until:
        ranges.append((low, until))
    return ranges
