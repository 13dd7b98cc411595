"""The lake: every Delta read and write goes through here (delta-rs; no Delta jars on the JVM).

The interface is deliberately narrow (append, upsert, overwrite, read, changes) so its body can
change for a cluster (executors write Parquet, the driver commits) without touching any stage.
Appends are
idempotent: each carries an app transaction (app id + version), and a version already committed for
that app id is skipped, so a replayed micro-batch never duplicates rows.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import CommitProperties, Transaction
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

# Tables stay readable by every Delta reader (Spark, delta-rs, Polars, DuckDB).
TABLE_CONFIG = {"delta.enableDeletionVectors": "false"}
# Row groups of 64k rows let Spark split one file across cores (it splits at row groups).
WRITER = WriterProperties(max_row_group_size=64 * 1024, compression="ZSTD")


@dataclass(frozen=True)
class Changes:
    """Rows a table gained between two versions, as a Spark frame, and the version they end at."""

    frame: DataFrame
    files: list[str]
    to_version: int


class Lake:
    """Delta tables under one root, named `layer.table` (for example `silver.billing`)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

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

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table))

    def version(self, table: str) -> int | None:
        dt = self.table(table)
        return None if dt is None else dt.version()

    def committed(self, table: str, app_id: str) -> int | None:
        """Highest app-transaction version committed to `table` by `app_id`, if any."""
        dt = self.table(table)
        return None if dt is None else dt.transaction_version(app_id)

    def append(
        self,
        table: str,
        data: pa.Table,
        *,
        app_id: str,
        txn_version: int,
        stage: str,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Append `data` once per (app_id, txn_version); returns False if it was already there."""
        return self.append_once(table, data, {app_id: txn_version}, stage=stage, metadata=metadata)

    def append_once(
        self,
        table: str,
        data: pa.Table,
        txns: dict[str, int],
        *,
        stage: str,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Append `data` in one commit that records every app transaction in `txns`; skipped
        (returns False) when all of them are already committed at or past those versions; with
        no transactions it always appends."""
        with self._locks[table]:
            dt = self.table(table)  # one log read serves both the check and the create decision
            if dt is not None and _all_done(dt, txns):
                return False
            write_deltalake(
                self.uri(table),
                data,
                mode="append",
                commit_properties=_props(stage, txns, metadata),
                writer_properties=WRITER,
                configuration=TABLE_CONFIG if dt is None else None,
            )
            return True

    def upsert(
        self,
        table: str,
        rows: pa.Table,
        key: str,
        *,
        delete_keys: list[str],
        stage: str,
        txns: dict[str, int] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """In one commit: insert or replace `rows` by `key`, and delete the rows whose key is in
        `delete_keys` (and not in `rows`). Creates the table on first use; skipped when every
        app transaction in `txns` is already committed."""
        with self._locks[table]:
            dt = self.table(table)
            if dt is not None and _all_done(dt, txns):
                return
            props = _props(stage, txns or {}, metadata)
            if dt is None:
                write_deltalake(
                    self.uri(table),
                    rows,
                    mode="append",
                    commit_properties=props,
                    writer_properties=WRITER,
                    configuration=TABLE_CONFIG,
                )
                return
            keep = set(rows.column(key).to_pylist())
            gone = [k for k in dict.fromkeys(delete_keys) if k not in keep]
            deletes = pa.table(
                {
                    name: pa.array(gone, rows.schema.field(key).type)
                    if name == key
                    else pa.nulls(len(gone), rows.schema.field(name).type)
                    for name in rows.schema.names
                }
            )
            ops = pa.array(["upsert"] * rows.num_rows + ["delete"] * len(gone), pa.string())
            source = pa.concat_tables([rows, deletes]).append_column("_op", ops)
            (
                dt.merge(
                    source,
                    f"t.{key} = s.{key}",
                    source_alias="s",
                    target_alias="t",
                    writer_properties=WRITER,
                    commit_properties=props,
                )
                .when_matched_delete("s._op = 'delete'")
                .when_matched_update_all("s._op = 'upsert'", except_cols=["_op"])
                .when_not_matched_insert_all("s._op = 'upsert'", except_cols=["_op"])
                .execute()
            )

    def overwrite(
        self,
        table: str,
        data: pa.Table,
        *,
        stage: str,
        metadata: dict[str, Any] | None = None,
        txns: dict[str, int] | None = None,
    ) -> None:
        """Replace the table's content in one new version (reference loads, full recomputes)."""
        with self._locks[table]:
            props = _props(stage, txns or {}, metadata)
            write_deltalake(
                self.uri(table),
                data,
                mode="overwrite",
                schema_mode="overwrite",
                commit_properties=props,
                configuration=TABLE_CONFIG if not self.exists(table) else None,
            )

    def read_arrow(
        self,
        table: str,
        columns: list[str] | None = None,
        where: pl.Expr | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """A snapshot (current, or `version`), optionally only the rows matching `where`.

        Filtered reads go through Polars: it pushes the predicate down to Parquet statistics and
        reads the string-view columns delta-rs MERGE writes, which pyarrow's dataset filters
        cannot compare yet."""
        dt = self.table(table, version)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        if where is None:
            return dt.to_pyarrow_table(columns=columns)
        schema = pa.schema(dt.schema().to_arrow())
        frame = pl.scan_delta(self.uri(table), version=dt.version()).filter(where)
        if columns:
            frame = frame.select(columns)
            schema = pa.schema([schema.field(c) for c in columns])
        return frame.collect().to_arrow().cast(schema)

    def arrow_schema(self, table: str) -> pa.Schema:
        dt = self.table(table)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        return pa.schema(dt.schema().to_arrow())

    def read_spark(
        self, spark: SparkSession, table: str, columns: list[str] | None = None
    ) -> DataFrame:
        """The table's current snapshot as a Spark frame, read from its active Parquet files."""
        dt = self.table(table)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        return self._frame(spark, dt, dt.file_uris(), columns)

    def changes(
        self,
        spark: SparkSession,
        table: str,
        since_version: int | None,
        until_version: int | None = None,
    ) -> Changes:
        """Rows appended after `since_version` (None: from the start) up to `until_version`
        (None: the current version).

        Works on append-only tables (bronze): the rows are those of files active now that were
        not active at `since_version`. A rewrite (compaction, delete) in that range is refused
        rather than replayed as new rows.
        """
        dt = self.table(table, until_version)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        files = self._added(dt, table, since_version)
        return Changes(self._frame(spark, dt, files, None), files, dt.version())

    def added_files(self, table: str, since_version: int | None, until_version: int) -> list[str]:
        """Parquet files an append-only table gained after `since_version` up to
        `until_version` (for small increments read without Spark)."""
        dt = self.table(table, until_version)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        return self._added(dt, table, since_version)

    def _added(self, dt: DeltaTable, table: str, since_version: int | None) -> list[str]:
        current = dt.version()
        if since_version is not None and since_version >= current:
            return []
        if since_version is not None:
            # Only the commits after `since_version`: a long stream has thousands of versions.
            for entry in dt.history(limit=current - since_version):
                v, op = entry.get("version", -1), entry.get("operation")
                if since_version < v <= current and op not in ("WRITE", "CREATE TABLE"):
                    raise RuntimeError(
                        f"{table}: version {v} is a {op}, not an append; "
                        "incremental reads of an append-only table cannot replay it"
                    )
        now = set(dt.file_uris())
        before: set[str] = set()
        if since_version is not None:
            before = set(DeltaTable(self.uri(table), version=since_version).file_uris())
        return sorted(now - before)

    @staticmethod
    def _frame(
        spark: SparkSession, dt: DeltaTable, files: list[str], columns: list[str] | None
    ) -> DataFrame:
        schema = from_arrow_schema(pa.schema(dt.schema().to_arrow()))
        if dt.metadata().partition_columns:
            raise NotImplementedError("partitioned tables are not read through Spark yet")
        frame = (
            spark.read.schema(schema).parquet(*files)
            if files
            else spark.createDataFrame([], schema)
        )
        return frame.select(*columns) if columns else frame


def _all_done(dt: DeltaTable, txns: dict[str, int] | None) -> bool:
    """True when `txns` is not empty and every app transaction in it is committed at or past
    its version: the write it guards already happened."""
    return bool(txns) and all(
        (done := dt.transaction_version(app)) is not None and done >= v
        for app, v in (txns or {}).items()
    )


def _props(stage: str, txns: dict[str, int], metadata: dict[str, Any] | None) -> CommitProperties:
    """Commit properties naming the stage, with the app transactions that make it idempotent."""
    return CommitProperties(
        app_transactions=[Transaction(app, v) for app, v in txns.items()] or None,
        custom_metadata={"stage": stage, **(metadata or {})},
    )
