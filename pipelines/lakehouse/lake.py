"""The lake: every Delta write goes through here, and the reads of processes that write.

Writes run on Spark with delta-spark (executors write the Parquet files, Delta commits the log);
readers without a JVM (the API, checks, other engines) read the same tables with delta-rs
(`pipelines.lakehouse.reader.LakeReader`, which `Lake` extends with writes and Spark reads).
The interface is deliberately narrow (append, upsert, overwrite, read, changes) so a stage does
not care which engine wrote a table.

Writes are idempotent: each carries app transactions (app id + version) and one already committed
is skipped, so a replayed micro-batch never duplicates rows. Delta records one app transaction
per commit; a write that advances several (a stage reading four silver tables) records one
table-local progress number instead, whose map of app versions is written next to the table
before the commit (see `Progress`).
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
from deltalake import DeltaTable
from pyspark.errors import PySparkRuntimeError
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.lakehouse.arrowtypes import spark_ready
from pipelines.lakehouse.reader import LakeReader, insert_ranges

# Rows per file a driver-side table is written as (larger tables spread over every core).
FILE_ROWS = 256 * 1024
# Columns never worth statistics: long, unique and never filtered on.
NO_STATS = frozenset({"raw_line"})
# Session settings a MERGE takes its app transaction from, and the commit metadata setting.
TXN_SETTINGS = ("spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion")
METADATA_SETTING = "spark.databricks.delta.commitInfo.userMetadata"
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
CHANGE_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


class LakeWriteError(RuntimeError):
    """A write to the lake could not run (no Spark session in this process)."""


@dataclass(frozen=True)
class Changes:
    """Rows a table gained between two versions, as a Spark frame, and the version they end at."""

    frame: DataFrame
    to_version: int


Rows: TypeAlias = pa.Table | DataFrame


class Lake(LakeReader):
    """Delta tables under one root, read and written."""

    def __init__(
        self, root: Path | str, spark: SparkSession | Callable[[], SparkSession] | None = None
    ) -> None:
        """`spark` writes (a session, or a function that starts one on the first write); without
        it the process's active session does, and a reader-only process needs none."""
        super().__init__(root)
        self._spark = spark
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._own: SparkSession | None = None  # for MERGE and OPTIMIZE (see `_session`)
        self._own_lock = threading.Lock()

    # ------------------------------------------------------------ writes (delta-spark)

    @property
    def spark(self) -> SparkSession:
        if callable(self._spark):
            self._spark = self._spark()
        if self._spark is not None:
            return self._spark
        try:  # the thread's active session, else the process's (a worker thread has no active one)
            return SparkSession.active()
        except PySparkRuntimeError:
            raise LakeWriteError(
                f"writing to the lake at {self.root} needs a Spark session (delta-spark); "
                "this process has none: start one with pipelines.lakehouse.spark.spark_session()"
            ) from None

    def append(
        self,
        table: str,
        data: Rows,
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
        data: Rows,
        txns: dict[str, int],
        *,
        stage: str,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Append `data` in one commit that records every app transaction in `txns`; skipped
        (returns False) when all of them are already committed at or past those versions; with
        no transactions it always appends."""
        return self._write(table, data, "append", txns, stage, metadata)

    def overwrite(
        self,
        table: str,
        data: Rows,
        *,
        stage: str,
        metadata: dict[str, Any] | None = None,
        txns: dict[str, int] | None = None,
    ) -> None:
        """Replace the table's content in one new version (reference loads, full recomputes)."""
        self._write(table, data, "overwrite", txns or {}, stage, metadata)

    def _write(
        self,
        table: str,
        data: Rows,
        mode: str,
        txns: dict[str, int],
        stage: str,
        metadata: dict[str, Any] | None,
    ) -> bool:
        with self._locks[table]:
            dt = self.table(table)
            if dt is not None and self._all_done(table, dt, txns):
                return False
            self._save(table, dt, data, mode, txns, stage, metadata)
            return True

    def _save(
        self,
        table: str,
        dt: DeltaTable | None,
        data: Rows,
        mode: str,
        txns: dict[str, int],
        stage: str,
        metadata: dict[str, Any] | None,
    ) -> None:
        """One delta-spark write of `data` (`dt`: the table before it, None when new)."""
        frame = self.frame(data)
        writer = (
            frame.write.format("delta")
            .mode(mode)
            .option("userMetadata", _user_metadata(stage, metadata))
            .option("overwriteSchema" if mode == "overwrite" else "mergeSchema", "true")
        )
        if dt is None:
            for key, value in _creation_properties(frame.columns).items():
                writer = writer.option(key, value)
        progress = self._progress(table)
        txn = progress.prepare(dt, txns)
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
        writer.save(self.uri(table))
        progress.settle(txn)

    def upsert(
        self,
        table: str,
        rows: Rows,
        key: str,
        *,
        delete_keys: list[str],
        stage: str,
        txns: dict[str, int] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """In one Delta MERGE: insert or replace `rows` by `key`, and delete the rows whose key
        is in `delete_keys` (and not in `rows`). Creates the table on first use; skipped when
        every app transaction in `txns` is already committed."""
        from delta.tables import DeltaTable as SparkDeltaTable

        txns = txns or {}
        with self._locks[table]:
            dt = self.table(table)
            if dt is None:
                self._save(table, None, rows, "append", txns, stage, metadata)
                return
            if self._all_done(table, dt, txns):
                return
            source = self._merge_source(self.frame(rows), key, delete_keys)
            columns = [c for c in source.columns if c != "_op"]
            view = f"cdp_merge_{uuid.uuid4().hex}"
            source.createOrReplaceGlobalTempView(view)
            progress = self._progress(table)
            try:
                with self._session(stage, metadata) as session:
                    txn = progress.prepare(dt, txns)
                    if txn is not None:
                        for setting, value in zip(TXN_SETTINGS, txn, strict=True):
                            session.conf.set(setting, str(value))
                    values: dict[str, str | Column] = {c: f"s.`{c}`" for c in columns}
                    (
                        SparkDeltaTable.forPath(session, self.uri(table))
                        .alias("t")
                        .merge(
                            session.table(f"global_temp.{view}").alias("s"),
                            f"t.`{key}` = s.`{key}`",
                        )
                        .whenMatchedDelete("s._op = 'delete'")
                        .whenMatchedUpdate("s._op = 'upsert'", set=values)
                        .whenNotMatchedInsert("s._op = 'upsert'", values=values)
                        .withSchemaEvolution()  # a release that adds columns (as appends do)
                        .execute()
                    )
                progress.settle(txn)
            finally:
                self.spark.catalog.dropGlobalTempView(view)

    @contextmanager
    def _session(
        self, stage: str, metadata: dict[str, Any] | None = None
    ) -> Iterator[SparkSession]:
        """The lake's own session for a MERGE or OPTIMIZE, one operation at a time: Delta takes
        their commit metadata (and a MERGE's app transaction) from session settings, which must
        not leak into other writes. One session is reused: Spark keeps every session it ever
        made (a new one per MERGE piled up in a long-running stream)."""
        with self._own_lock:
            if self._own is None:
                self._own = self.spark.newSession()
            session = self._own
            session.conf.set(METADATA_SETTING, _user_metadata(stage, metadata))
            try:
                yield session
            finally:
                for key in (*TXN_SETTINGS, METADATA_SETTING):
                    session.conf.unset(key)

    def _merge_source(self, rows: DataFrame, key: str, delete_keys: list[str]) -> DataFrame:
        """`rows` tagged `upsert`, plus one `delete` row (other columns null) per key to drop
        that `rows` does not hold."""
        from pyspark.sql import functions as F

        upserts = rows.withColumn("_op", F.lit("upsert"))
        if not delete_keys:
            return upserts
        key_type = rows.schema[key].dataType
        gone = (
            self.spark.createDataFrame([(k,) for k in dict.fromkeys(delete_keys)], [key])
            .select(F.col(key).cast(key_type).alias(key))
            .join(rows.select(key), key, "left_anti")
        )
        deletes = gone.select(
            *[
                F.col(key) if f.name == key else F.lit(None).cast(f.dataType).alias(f.name)
                for f in rows.schema.fields
            ],
            F.lit("delete").alias("_op"),
        )
        return upserts.unionByName(deletes)

    def recluster(self, table: str, key: str, *, stage: str) -> None:
        """Compact a table's small files into large ones clustered by `key` (Delta OPTIMIZE
        ZORDER BY): same rows, one new version, and a MERGE of a few keys then rewrites few
        files."""
        from delta.tables import DeltaTable as SparkDeltaTable

        with self._locks[table]:
            self._existing(table)
            with self._session(stage) as session:
                SparkDeltaTable.forPath(session, self.uri(table)).optimize().executeZOrderBy(key)

    def compact(self, table: str, *, stage: str) -> tuple[int, int]:
        """Bin-pack a table's small files into large ones (Delta OPTIMIZE): the same rows in
        a version that changes no data, so the Change Data Feed and the stages reading it see
        nothing new. Returns the file count before and after."""
        from delta.tables import DeltaTable as SparkDeltaTable

        with self._locks[table]:
            before = self.file_count(table)
            with self._session(stage) as session:
                SparkDeltaTable.forPath(session, self.uri(table)).optimize().executeCompaction()
            return before, self.file_count(table)

    def vacuum(self, table: str, hours: float | None = None) -> int:
        """Delete the files no version within the last `hours` (default: the table's
        `delta.deletedFileRetentionDuration`) still references (Delta VACUUM); returns how many
        Parquet files went. Under Delta's 7 days, readers of older versions lose their files."""
        from delta.tables import DeltaTable as SparkDeltaTable

        def data_files() -> int:
            files = Path(self.uri(table)).rglob("*.parquet")
            return sum(1 for f in files if "_delta_log" not in f.parts)

        with self._locks[table], self._session("vacuum") as session:
            before = data_files()
            delta = SparkDeltaTable.forPath(session, self.uri(table))
            if hours is None:
                delta.vacuum()
            else:
                session.conf.set(RETENTION_CHECK, "false")  # a shorter window, asked for
                try:
                    delta.vacuum(hours)
                finally:
                    session.conf.unset(RETENTION_CHECK)
            return before - data_files()

    def delete_before(self, table: str, column: str, cutoff: datetime, *, stage: str) -> int:
        """Delete the rows whose `column` is before `cutoff` (Delta DELETE: the files holding
        them are rewritten without them; the Change Data Feed records deletes, never new
        rows). Returns how many rows went."""
        from delta.tables import DeltaTable as SparkDeltaTable
        from pyspark.sql import functions as F

        with self._locks[table]:
            before = self.version(table)
            with self._session(stage, {"cutoff": cutoff.isoformat()}) as session:
                delta = SparkDeltaTable.forPath(session, self.uri(table))
                delta.delete(F.col(column) < F.lit(cutoff))
            if self.version(table) == before:
                return 0
            history = self._existing(table).history(1)[0]
            return int(history.get("operationMetrics", {}).get("numDeletedRows", 0))

    def frame(self, data: Rows) -> DataFrame:
        """`data` as a Spark frame: a driver-side Arrow table is sliced over the cores."""
        if isinstance(data, DataFrame):
            return data
        spark = self.spark
        ready = _spark_ready(data)
        if not ready.num_rows:  # PySpark cannot take an Arrow column without chunks
            return spark.createDataFrame([], from_arrow_schema(ready.schema))
        return sized(spark.createDataFrame(ready), data.num_rows)

    def _all_done(self, table: str, dt: DeltaTable, txns: dict[str, int]) -> bool:
        """True when `txns` is not empty and every app transaction in it is committed at or past
        its version: the write it guards already happened."""
        return bool(txns) and all(
            (done := self._committed(table, dt, app)) is not None and done >= v
            for app, v in txns.items()
        )

    # ------------------------------------------------------------ reads

    def read_spark(
        self,
        spark: SparkSession,
        table: str,
        columns: list[str] | None = None,
        version: int | None = None,
    ) -> DataFrame:
        """The table's snapshot (current, or `version`) as a Spark frame."""
        self._existing(table)
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        frame = reader.load(self.uri(table))
        return frame.select(*columns) if columns else frame

    def changes(
        self,
        spark: SparkSession,
        table: str,
        since_version: int | None,
        until_version: int | None = None,
    ) -> Changes:
        """Rows inserted after `since_version` (None: from the start) up to `until_version`
        (None: the current version), from the table's Change Data Feed: compaction adds no
        rows to it, rows a DELETE or MERGE rewrote are not replayed as new, and DELETE commits
        (retention, erasure) are not read at all (`insert_ranges`)."""
        dt = self._existing(table, until_version)
        until = dt.version()
        start = 0 if since_version is None else since_version + 1
        frames = [
            spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", low)
            .option("endingVersion", high)
            .load(self.uri(table))
            .where("_change_type = 'insert'")
            .drop(*CHANGE_COLUMNS)
            for low, high in insert_ranges(dt, start, until)
        ]
        if not frames:
            return Changes(spark.read.format("delta").load(self.uri(table)).limit(0), until)
        return Changes(reduce(DataFrame.unionByName, frames), until)


def sized(frame: DataFrame, rows: int) -> DataFrame:
    """`frame` in as many partitions (so files when written) as `rows` needs at FILE_ROWS each,
    at most one per core: a write of a few rows makes one file, not one per partition."""
    cores = frame.sparkSession.sparkContext.defaultParallelism
    return frame.coalesce(max(1, min(cores, math.ceil(rows / FILE_ROWS))))


def _user_metadata(stage: str, metadata: dict[str, Any] | None) -> str:
    """The commit's metadata (the stage that wrote it and its own fields), as Delta stores it."""
    return json.dumps({"stage": stage, **(metadata or {})}, sort_keys=True, default=str)


def _creation_properties(columns: list[str]) -> dict[str, str]:
    """Per-table properties set when a table is created: statistics on every column readers
    filter on (all but NO_STATS); the lake-wide ones are session defaults
    (pipelines.lakehouse.spark)."""
    stats = [c for c in columns if c not in NO_STATS]
    if len(stats) == len(columns):
        return {"delta.dataSkippingNumIndexedCols": "-1"}
    return {"delta.dataSkippingStatsColumns": ",".join(f"`{c}`" for c in stats)}


def _spark_ready(data: pa.Table) -> pa.Table:
    """Arrow types Spark cannot take from Arrow replaced by the ones it can (same values)."""
    target = spark_ready(data.schema)
    return data if target == data.schema else data.cast(target)
