"""Landing -> bronze -> silver, as one Spark structured-streaming query per source (and, with
`source.kind: kafka`, a second one per source reading its topic).

Each query reads new landing files as text (a broken line is still a line), or its topic's
messages (each message a line; its origin `kafka://<topic>/<partition>/<offset>` where a file's
path would be), appends them to `bronze.<source>` with ingest metadata, then refreshes silver
from the bronze rows it has not seen. The bronze append carries an app transaction (query id +
batch id) and the streaming checkpoint records the files or offsets of each batch, so a crash
and restart neither loses nor duplicates a row. The same queries run bounded (`availableNow`,
`cdp run` and Dagster) or continuously (`cdp stream`), sharing one checkpoint per source and
input; a lock file stops two processes running the same source at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Settings, SourceContract
from pipelines.ingest.metrics import StreamMetrics
from pipelines.ingest.silver import (
    SilverResult,
    ValidationRules,
    bronze_frame,
    check_lines,
    commit_silver,
    refresh_silver,
    silver_watermark,
)
from pipelines.lakehouse.catalog import bronze_table, ingest_checkpoint
from pipelines.lakehouse.kafka import spark_options
from pipelines.lakehouse.lake import Lake
from pipelines.lakehouse.locks import stage_lock
from pipelines.lakehouse.spark import release_plans, scheduler_pool


class CheckpointMismatchError(RuntimeError):
    """A streaming checkpoint says files were ingested into a table that is not there."""


def landing_warnings(landing_root: Path, sources: list[str]) -> list[str]:
    """Files in the landing zone that no query will ever read, said out loud rather than skipped:
    folders without a contract, and files that are not `*.jsonl` (dot files are in-flight)."""
    if not landing_root.exists():
        return []
    out = []
    for folder in sorted(p for p in landing_root.iterdir() if p.is_dir()):
        if folder.name == "reference":
            continue
        if folder.name not in sources:
            out.append(
                f"{folder}: no contract for source {folder.name!r} in conf/contracts; "
                "its files are not ingested"
            )
            continue
        strays = sorted(
            f.name
            for f in folder.iterdir()
            if f.is_file() and not f.name.startswith((".", "_")) and f.suffix != ".jsonl"
        )
        if strays:
            shown = ", ".join(strays[:5]) + (
                f" and {len(strays) - 5} more" if len(strays) > 5 else ""
            )
            out.append(
                f"{folder}: {len(strays)} file(s) not named *.jsonl are not ingested: {shown} "
                "(rename them to .jsonl to ingest them)"
            )
    return out


def to_bronze(lines: DataFrame, source: str, ingest_ts: datetime, batch_id: int) -> DataFrame:
    """Raw landing lines plus ingest metadata. The batch's constants (ingest time, batch id) come
    from a one-row frame joined on, not literals: Spark writes literal numbers and timestamps
    into the code it generates, so literals meant compiling and warming up new code every
    micro-batch (~20% of the pass)."""
    stamp = lines.sparkSession.createDataFrame(
        [(ingest_ts, batch_id)], "ingest_ts timestamp, batch_id bigint"
    )
    return lines.crossJoin(F.broadcast(stamp)).select(
        F.col("value").alias("raw_line"),
        F.lit(source).alias("source"),
        F.col("file_path"),
        "ingest_ts",
        "batch_id",
        # Unique within the batch and stored once, so it orders lines for dedupe and lineage.
        F.monotonically_increasing_id().alias("line_id"),
    )


@dataclass
class SourceProgress:
    """What one source's query did in this process."""

    source: str
    batches: int = 0
    bronze_rows: int = 0
    silver: list[SilverResult] = field(default_factory=list)


class Coalesced:
    """Runs a downstream step (identity, gold) in a thread of its own, one call at a time.

    Micro-batches only ask for a run and go on ingesting: asks made while a run is under way
    fold into one next run, which reads everything silver gained meanwhile. So ingestion never
    waits for gold, and when gold is the slower stage it takes larger steps instead of falling
    behind one batch at a time. A failed run is kept and raised to the ingesting side.
    """

    def __init__(self, step: Callable[[], None]) -> None:
        self._step = step
        self._wanted = threading.Condition()
        self._pending = False
        self._asked = self._done = 0  # asks made; asks that a finished run covered
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="downstream", daemon=True)
        self._thread.start()

    def request(self, *, wait: bool = False) -> None:
        """Ask for a run that starts after this call (it sees everything committed so far);
        with `wait`, return once that run has ended."""
        with self._wanted:
            self._pending = True
            self._asked += 1
            asked = self._asked
            self._wanted.notify_all()
            while wait and self._done < asked and not self._closed:
                self._wanted.wait()
        if wait:
            self.raise_failure()

    def _loop(self) -> None:
        while True:
            with self._wanted:
                while not self._pending and not self._closed:
                    self._wanted.wait()
                if not self._pending:
                    return
                self._pending, covers = False, self._asked
            try:
                self._step()
            except BaseException as exc:  # kept for the ingesting side; the loop ends
                with self._wanted:
                    self.error, self._closed = exc, True
                    self._wanted.notify_all()
                return
            with self._wanted:
                self._done = covers
                self._wanted.notify_all()

    def raise_failure(self) -> None:
        """Raise the error of a failed run, if any."""
        if self.error is not None:
            raise RuntimeError(f"the downstream step failed: {self.error}") from self.error

    def close(self, *, raise_failure: bool = True) -> None:
        """Finish what was asked, stop the thread, and raise a failed run's error."""
        with self._wanted:
            self._closed = True
            self._wanted.notify_all()
        self._thread.join()
        if raise_failure:
            self.raise_failure()

    def __enter__(self) -> Coalesced:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        # A run already failing for another reason is not masked by a downstream failure.
        self.close(raise_failure=kind is None)


class Ingestion:
    """Runs the per-source streaming queries against one lake."""

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        lake: Lake | None = None,
        on_event: Callable[[str], None] | None = None,
        downstream: Callable[[SparkSession], None] | None = None,
        wake: Callable[[], bool] | None = None,
        lockstep: bool = False,
        metrics: StreamMetrics | None = None,
        owner: str | None = None,
    ) -> None:
        """`downstream` (identity, gold) runs beside the queries, one call at a time: again after
        any micro-batch's silver commit (batches that commit during a call fold into the next
        call) and once at the end of a bounded run; a continuous run also runs it whenever
        `wake` says so (a steward released a held source). With `lockstep` each micro-batch
        waits for the run it asked for: one downstream step per batch, as a replay or a test of
        incremental steps wants. `metrics` counts each micro-batch for a scraper; `owner` says
        what holds the sources' stage locks (e.g. a Dagster run), for whoever is refused."""
        self.spark = spark
        self.owner = owner
        self.lockstep = lockstep
        self.metrics = metrics
        self.downstream = downstream
        self.wake = wake
        self._coalesced: Coalesced | None = None
        self.settings = settings
        self.lake = lake or Lake(settings.paths.lake_root)
        self.rules = ValidationRules.from_settings(settings)
        self.say = on_event or (lambda msg: None)
        self.progress = {s: SourceProgress(s) for s in settings.sources}
        self._lock = threading.Lock()
        # The sources' main Spark passes take turns (by default): interleaving four jobs' tasks on
        # the same cores cost ~25% more CPU than running them one after another, and each
        # source's wording pass and Delta writes still overlap the next source's pass
        # (docs/lake.md).
        self._spark_passes = threading.BoundedSemaphore(settings.engine.source_passes_at_once)
        # A source's file and topic queries append to the same tables: one batch at a time.
        self._per_source = {s: threading.Lock() for s in settings.sources}

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the queries read: the landing folder, and the topics with the Kafka source."""
        return ("files", "kafka") if self.settings.source.kind == "kafka" else ("files",)

    def checkpoint(self, source: str, kind: str = "files") -> Path:
        return ingest_checkpoint(self.settings, source, kind)

    def _query_id(self, source: str, kind: str) -> str:
        # Spark keeps the query id in the checkpoint across restarts; a new checkpoint gets a new
        # id, so its batch ids (restarting at 0) never collide with the old ones' transactions.
        meta = self.checkpoint(source, kind) / "metadata"
        return str(json.loads(meta.read_text().splitlines()[0])["id"])

    def _on_batch(self, contract: SourceContract, kind: str) -> Callable[[DataFrame, int], None]:
        source = contract.source

        def handle(lines: DataFrame, batch_id: int) -> None:
            with self._per_source[source]:
                handle_batch(lines, batch_id)

        def handle_batch(lines: DataFrame, batch_id: int) -> None:
            started = time.perf_counter()
            # One Spark pass parses and checks the lines into executor memory; bronze, silver,
            # quarantine and drift are all written from it, none through the driver.
            checked = check_lines(
                to_bronze(lines, source, datetime.now(UTC), batch_id), contract, self.rules
            )
            try:
                bronze = bronze_table(source)
                before = self.lake.version(bronze)
                with self._spark_passes:  # the first write runs the pass
                    wrote = self.lake.append(
                        bronze,
                        bronze_frame(checked, source),
                        app_id=f"ingest.{source}:{self._query_id(source, kind)}",
                        txn_version=batch_id,
                        stage=bronze,
                        metadata={"batch_id": str(batch_id)},
                    )
                version = self.lake.version(bronze)
                assert version is not None
                added = self.lake.rows_written(bronze, version) if wrote else 0
                if wrote and silver_watermark(self.lake, contract) == before:
                    result = commit_silver(self.lake, contract, self.rules, checked, version)
                else:
                    # A replayed batch, or silver behind bronze after a crash: refine bronze's
                    # range.
                    result = refresh_silver(lines.sparkSession, self.lake, contract, self.rules)
            finally:
                checked.unpersist()
                release_plans()
            with self._lock:
                p = self.progress[source]
                p.batches += 1
                p.bronze_rows += added
                if not result.skipped:
                    p.silver.append(result)
            bad = sum(result.quarantined.values())
            if self.metrics is not None:
                self.metrics.batch(
                    source, time.perf_counter() - started, added, result.valid, result.quarantined
                )
            self._ask_downstream()
            self.say(
                f"{source}{'' if kind == 'files' else f' ({kind})'}: batch {batch_id}: "
                f"bronze +{added}"
                f"{'' if wrote else ' (already committed)'}, silver +{result.valid}, "
                f"quarantine +{bad}"
            )

        return handle

    def _ask_downstream(self) -> None:
        if self._coalesced is not None:
            self._coalesced.raise_failure()  # stops the query: the run reports the failure
            self._coalesced.request(wait=self.lockstep)

    def _check_checkpoint(self, source: str, kind: str) -> None:
        checkpoint = self.checkpoint(source, kind)
        commits = checkpoint / "commits"
        done = list(commits.glob("[0-9]*")) if commits.exists() else []
        if done and not self.lake.exists(bronze_table(source)):
            what = "landing files" if kind == "files" else "topic from its starting offsets"
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint} records {len(done)} ingested batches but "
                f"bronze.{source} does not exist under {self.lake.root}: the lake was removed "
                f"without its checkpoints. Delete that checkpoint folder to ingest the {what} "
                "again, or point CDP_LAKE_ROOT at the lake it belongs to."
            )

    def _landing_bytes(self, source: str) -> int:
        folder = self.settings.paths.landing_root / source
        return sum(f.stat().st_size for f in folder.glob("*.jsonl")) if folder.exists() else 0

    def _landing_lines(self, source: str) -> DataFrame:
        """New landing files of a source, a row per line: `value`, `file_path`."""
        landing = self.settings.paths.landing_root / source
        landing.mkdir(parents=True, exist_ok=True)
        reader = self.spark.readStream.format("text").option("pathGlobFilter", "*.jsonl")
        if self.settings.engine.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", self.settings.engine.max_files_per_trigger)
        return reader.load(str(landing)).select("value", F.col("_metadata.file_path"))

    def _topic_lines(self, source: str) -> DataFrame:
        """New messages of a source's topic, a row per message: `value` (the message as UTF-8
        text) and its origin as `file_path`. Offsets no longer in the topic (retention passed
        before they were read) fail the query rather than skip silently (failOnDataLoss)."""
        cfg = self.settings.source.kafka
        reader = (
            self.spark.readStream.format("kafka")
            .options(**spark_options(cfg))
            .option("subscribe", cfg.topic(source))
            .option("startingOffsets", cfg.starting_offsets)
            .option("failOnDataLoss", "true")
        )
        if cfg.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", cfg.max_offsets_per_trigger)
        return reader.load().select(
            F.col("value").cast("string").alias("value"),
            F.format_string("kafka://%s/%d/%d", "topic", "partition", "offset").alias("file_path"),
        )

    def start(self, source: str, *, available_now: bool, kind: str = "files") -> StreamingQuery:
        self._check_checkpoint(source, kind)
        contract = self.settings.contract(source)
        lines = self._landing_lines(source) if kind == "files" else self._topic_lines(source)
        writer = (
            lines.writeStream.queryName(
                f"ingest_{source}" + ("" if kind == "files" else f"_{kind}")
            )
            .foreachBatch(self._on_batch(contract, kind))
            .option("checkpointLocation", str(self.checkpoint(source, kind)))
        )
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(
                processingTime=f"{self.settings.engine.trigger_interval_s} seconds"
            )
        return writer.start()

    def run(
        self,
        sources: list[str] | None = None,
        *,
        available_now: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        """Run the queries of `sources` (default all). Bounded runs return when every query has
        drained the landing zone; continuous runs return once `stop` is set (or a query dies)."""
        sources = sources or self.settings.sources
        for warning in landing_warnings(self.settings.paths.landing_root, self.settings.sources):
            self.say(f"warning: {warning}")
        with ExitStack() as stack:
            for s in sources:
                stack.enter_context(
                    stage_lock(self.settings.paths.checkpoint_root, f"ingest.{s}", self.owner)
                )
            if self.downstream is not None:
                step, spark = self.downstream, self.spark

                def run_step() -> None:
                    try:
                        with scheduler_pool(spark, "promotion"):
                            step(spark)
                    finally:
                        release_plans()

                self._coalesced = stack.enter_context(Coalesced(run_step))
                stack.callback(setattr, self, "_coalesced", None)
            self._run_queries(sources, available_now, stop)
            # Catch up silver on bronze rows a crashed run committed but did not refine.
            for s in sources:
                result = refresh_silver(
                    self.spark, self.lake, self.settings.contract(s), self.rules
                )
                if not result.skipped:
                    self.progress[s].silver.append(result)
            if self._coalesced is not None:
                self._coalesced.request()  # the last run: what the end of the run committed

    def _record_progress(self, queries: list[StreamingQuery]) -> None:
        """The topic queries' distance behind the newest offsets, for the metrics."""
        if self.metrics is None:
            return
        for q in queries:
            if q.name.endswith("_kafka"):
                source = q.name.removeprefix("ingest_").removesuffix("_kafka")
                self.metrics.kafka_progress(source, q.lastProgress)

    def _run_queries(
        self, sources: list[str], available_now: bool, stop: threading.Event | None
    ) -> None:
        # Largest backlog first: its pass takes the turn first, so its Delta writes overlap
        # the smaller sources' passes instead of trailing after them.
        by_backlog = sorted(sources, key=self._landing_bytes, reverse=True)
        with scheduler_pool(self.spark, "ingest"):  # the queries' threads inherit it
            queries = [
                self.start(s, available_now=available_now, kind=kind)
                for kind in self.inputs
                for s in by_backlog
            ]
        try:
            if available_now:
                for q in queries:
                    q.awaitTermination()
            else:
                stop = stop or threading.Event()
                while not stop.is_set() and all(q.isActive for q in queries):
                    self._record_progress(queries)
                    if self._coalesced is not None:
                        self._coalesced.raise_failure()
                        if self.wake is not None and self.wake():
                            self._coalesced.request()
                    stop.wait(0.5)
        finally:
            # A batch cut short here is replayed on the next start: appends are idempotent.
            for q in queries:
                if q.isActive:
                    q.stop()
        for q in queries:
            if q.exception() is not None:
                raise RuntimeError(f"query {q.name} failed: {q.exception()}")
