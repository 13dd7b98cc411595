"""The lake: every Delta read and write goes through here (delta-rs; no Delta jars on the JVM).

The interface is deliberately narrow (append, upsert, overwrite, read, changes) so its body can
change for a cluster (executors write Parquet, the driver commits) without touching any stage.
Appends are
idempotent: each carries an app transaction (app id + version), and a version already committed for
that app id is skipped, so a replayed micro-batch never duplicates rows.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import ColumnProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

# Tables stay readable by every Delta reader (Spark, delta-rs, Polars, DuckDB).
TABLE_CONFIG = {"delta.enableDeletionVectors": "false"}
# Row groups of 64k rows let Spark split one file across cores (it splits at row groups).
ROW_GROUP_ROWS = 64 * 1024
WRITER = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="ZSTD")
# Tables rewritten by MERGE every micro-batch (a batch's persons sit in every file): dictionary
# encoding of their high-cardinality columns costs more than it saves, and LZ4 decodes fastest.
# Measured on 1M profiles: a 10k-row MERGE takes 1.3 s instead of 3.6 s (docs/profiles.md).
REWRITE_WRITER = WriterProperties(
    max_row_group_size=ROW_GROUP_ROWS,
    compression="LZ4_RAW",
    default_column_properties=ColumnProperties(dictionary_enabled=False),
)
REWRITTEN_TABLES = frozenset({"gold.profiles"})
FILE_ROWS = 64 * 1024  # rows per file of a rewritten table


# Bronze's raw lines and line keys are all distinct: a dictionary tried first for them cost ~20% of
# the write and a file 10% larger than plain encoding (731k network lines: 0.47 -> 0.36 s).
BRONZE_WRITER = WriterProperties(
    max_row_group_size=ROW_GROUP_ROWS,
    compression="ZSTD",
    column_properties={
        c: ColumnProperties(dictionary_enabled=False) for c in ("raw_line", "event_id", "line_id")
    },
)


def _writer(table: str) -> WriterProperties:
    if table.startswith("bronze."):
        return BRONZE_WRITER
    return REWRITE_WRITER if table in REWRITTEN_TABLES else WRITER


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

    def _existing(self, table: str, version: int | None = None) -> DeltaTable:
        dt = self.table(table, version)
        if dt is None:
            raise FileNotFoundError(f"Delta table {table} does not exist at {self.uri(table)}")
        return dt

    def exists(self, table: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(table))

    def file_count(self, table: str) -> int:
        dt = self.table(table)
        return 0 if dt is None else len(dt.file_uris())

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
                # a new contract version may add a column; rows without it read as null
                schema_mode="merge" if dt is not None else None,
                commit_properties=_props(stage, txns, metadata),
                writer_properties=_writer(table),
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
        current: pl.DataFrame | None = None,
    ) -> None:
        """In one commit: insert or replace `rows` by `key`, and delete the rows whose key is in
        `delete_keys` (and not in `rows`). Creates the table on first use; skipped when every
        app transaction in `txns` is already committed. `current`: the table's current rows,
        when the caller has just read them (a full rewrite then does not read them again)."""
        with self._locks[table]:
            dt = self.table(table)
            if dt is not None and _all_done(dt, txns):
                return
            props = _props(stage, txns or {}, metadata)
            if table in REWRITTEN_TABLES and (
                dt is None or rows.num_rows + len(delete_keys) >= len(dt.file_uris())
            ):
                # Enough keys to touch every file anyway: one sorted copy-on-write pass.
                self._rewrite(table, dt, rows, key, delete_keys, props, current)
                return
            if dt is None:
                write_deltalake(
                    self.uri(table),
                    rows,
                    mode="append",
                    commit_properties=props,
                    writer_properties=_writer(table),
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
                    writer_properties=_writer(table),
                    commit_properties=props,
                )
                .when_matched_delete("s._op = 'delete'")
                .when_matched_update_all("s._op = 'upsert'", except_cols=["_op"])
                .when_not_matched_insert_all("s._op = 'upsert'", except_cols=["_op"])
                .execute()
            )

    def recluster(self, table: str, key: str, *, stage: str) -> None:
        """Rewrite a table sorted by `key` into files of FILE_ROWS rows (after many small MERGEs
        have fragmented it); same rows, one new version."""
        with self._locks[table]:
            dt = self._existing(table)
            empty = pa.schema(dt.schema().to_arrow()).empty_table()
            self._rewrite(table, dt, empty, key, [], _props(stage, {}, None), None)

    def _rewrite(
        self,
        table: str,
        dt: DeltaTable | None,
        rows: pa.Table,
        key: str,
        delete_keys: list[str],
        props: CommitProperties,
        current: pl.DataFrame | None,
    ) -> None:
        """Copy-on-write of the whole table in one pass: the current rows minus those replaced
        or deleted, plus `rows`, sorted by `key` into files of FILE_ROWS rows whose key ranges
        do not overlap (so a later MERGE of a few keys rewrites only their files), committed as
        one overwrite carrying the app transactions."""
        uri = self.uri(table)
        new = pl.from_arrow(rows)
        assert isinstance(new, pl.DataFrame)
        if dt is None:
            DeltaTable.create(uri, rows.schema, configuration=TABLE_CONFIG)
            dt = DeltaTable(uri)
            merged = new.sort(key)
        else:
            gone = pl.concat(
                [new.get_column(key), pl.Series(key, delete_keys, dtype=new.schema[key])]
            )
            stays = ~pl.col(key).is_in(gone.implode())
            kept = (
                current.filter(stays)
                if current is not None
                else pl.scan_delta(uri, version=dt.version()).filter(stays).collect()
            )
            merged = pl.concat([kept, new.select(kept.columns).cast(kept.schema)]).sort(key)

        def write(start: int) -> AddAction:
            part = merged.slice(start, FILE_ROWS)
            name = f"part-{uuid.uuid4()}.parquet"
            path = Path(uri) / name
            part.write_parquet(
                path, compression="lz4", row_group_size=ROW_GROUP_ROWS, statistics=True
            )
            bounds = part.select(pl.col(key).min().alias("lo"), pl.col(key).max().alias("hi"))
            stats = {
                "numRecords": part.height,
                "minValues": {key: bounds.item(0, "lo")},
                "maxValues": {key: bounds.item(0, "hi")},
                "nullCount": {key: part.get_column(key).null_count()},
            }
            return AddAction(
                name, path.stat().st_size, {}, int(time.time() * 1000), True, json.dumps(stats)
            )

        actions: list[AddAction | RemoveAction] = [
            write(start) for start in range(0, max(merged.height, 1), FILE_ROWS)
        ]
        dt.create_write_transaction(
            actions, mode="overwrite", schema=dt.schema(), commit_properties=props
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
                writer_properties=_writer(table),
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

        Reads go through Polars: it pushes the predicate down to Parquet statistics and reads the
        string-view columns delta-rs MERGE writes, which pyarrow's dataset filters cannot compare
        yet. (pyarrow's dataset reader also left a native thread behind that aborted the process
        at exit after large multi-file reads.)"""
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
        schema = pa.schema(dt.schema().to_arrow())
        frame = pl.scan_delta(self.uri(table), version=dt.version())
        if where is not None:
            frame = frame.filter(where)
        if columns:
            frame = frame.select(columns)
            schema = pa.schema([schema.field(c) for c in columns])
        return frame, schema

    def arrow_schema(self, table: str) -> pa.Schema:
        dt = self._existing(table)
        return pa.schema(dt.schema().to_arrow())

    def read_spark(
        self, spark: SparkSession, table: str, columns: list[str] | None = None
    ) -> DataFrame:
        """The table's current snapshot as a Spark frame, read from its active Parquet files."""
        dt = self._existing(table)
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
        dt = self._existing(table, until_version)
        files = self._added(dt, table, since_version)
        return Changes(self._frame(spark, dt, files, None), files, dt.version())

    def added_files(self, table: str, since_version: int | None, until_version: int) -> list[str]:
        """Parquet files an append-only table gained after `since_version` up to
        `until_version` (for small increments read without Spark)."""
        dt = self._existing(table, until_version)
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
