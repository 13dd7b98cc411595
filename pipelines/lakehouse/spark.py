"""The Spark session: one per process, configured from `EngineCfg`, UTC everywhere."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from pipelines.config import PROJECT_ROOT, EngineCfg

LOG4J = PROJECT_ROOT / "conf" / "log4j2.properties"
POOLS = PROJECT_ROOT / "conf" / "spark-pools.xml"  # the fair scheduler's pools: ingest, promotion
# The pinned JVM artifacts (jvm/pom.xml), fetched by `make install`; never downloaded at run time.
JVM_JARS = PROJECT_ROOT / ".jvm" / "jars"
DELTA_DEFAULTS = "spark.databricks.delta.properties.defaults"
POOL_PROPERTY = "spark.scheduler.pool"


class JavaMissingError(RuntimeError):
    """No usable Java runtime: Spark cannot start."""


JAVA_HELP = (
    "Spark needs a Java 17+ runtime and `java` was not found on the PATH.\n"
    "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless\n"
    "  or run `make java` (installs it when run as root), or set JAVA_HOME."
)


def check_java() -> None:
    """Fail with install instructions instead of a Py4J stack trace when Java is missing."""
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError(JAVA_HELP)
    try:
        subprocess.run([java, "-version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise JavaMissingError(f"`{java} -version` failed ({exc}).\n{JAVA_HELP}") from exc


class JvmArtifactsMissingError(RuntimeError):
    """The pinned JVM artifacts (Delta) are not installed: Spark could not read or write Delta."""


def jvm_jars() -> list[str]:
    """The jars every session loads (Delta and its dependencies), from the project's folder."""
    jars = sorted(str(j) for j in JVM_JARS.glob("*.jar"))
    if not any("delta-spark" in j for j in jars):
        raise JvmArtifactsMissingError(
            f"no Delta jars in {JVM_JARS}: the pinned JVM artifacts (jvm/pom.xml) are fetched "
            "by `make install` (scripts/fetch-jvm.sh, with Maven); run it once."
        )
    return jars


def spark_session(cfg: EngineCfg, app_name: str = "cdp") -> SparkSession:
    """Get or create the process's Spark session with the project's settings."""
    check_java()
    # Without this Spark warns on every start that the host name resolves to loopback.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (mapInArrow) must run this interpreter, the one with pyarrow installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The parallel collector: this JVM runs batch work (micro-batches), where throughput counts
    # and pauses do not; G1 spent ~8% more on the JSON parsing's short-lived garbage.
    java_opts = (
        f"-Duser.timezone=UTC -Dlog4j2.configurationFile={LOG4J.as_uri()} -XX:+UseParallelGC"
    )
    builder = (
        SparkSession.builder.master(cfg.spark_master)
        .appName(app_name)
        .config("spark.jars", ",".join(jvm_jars()))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
        # Every reader of the lake (delta-rs, Polars, DuckDB, pandas) reads microsecond
        # timestamps; Spark's default INT96 overflows nanoseconds for years past 2262.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.parquet.compression.codec", "zstd")
        # The lake's table properties (docs/lake.md): set on every table this session creates.
        .config(f"{DELTA_DEFAULTS}.enableChangeDataFeed", "true")
        .config(f"{DELTA_DEFAULTS}.enableDeletionVectors", "false")
        .config(f"{DELTA_DEFAULTS}.checkpointInterval", "50")
        .config(f"{DELTA_DEFAULTS}.logRetentionDuration", "interval 30 days")
        .config(f"{DELTA_DEFAULTS}.deletedFileRetentionDuration", "interval 7 days")
        # Delta rebuilds a table's state from its log in this many tasks (default 50): few
        # tasks for the small logs of frequently committed tables.
        .config("spark.databricks.delta.snapshotPartitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", str(cfg.ui_enabled).lower())
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        # Delta's VACUUM lists a table's folders in this many tasks (default 10,000, nearly all
        # empty): ~20 s per table on 2 cores even with nothing to delete, 2 s with this.
        .config(
            "spark.sql.sources.parallelPartitionDiscovery.parallelism", str(cfg.shuffle_partitions)
        )
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.extraJavaOptions", java_opts)
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # A source line repeating a JSON key must not fail the whole micro-batch.
        .config("spark.sql.mapKeyDedupPolicy", "LAST_WIN")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # Ingestion and promotion run side by side in `cdp stream`; each takes its pool's share
        # of the cores (conf/spark-pools.xml) instead of waiting behind the other's jobs.
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.scheduler.allocation.file", str(POOLS))
        # Contract checks generate large methods; HotSpot does not JIT methods over 8 KB of
        # bytecode, so such stages ran 2x slower than Spark's interpreted path. Fall back there.
        .config("spark.sql.codegen.hugeMethodLimit", "8000")
        # Small splits so a single bronze file still spreads over every core.
        .config("spark.sql.files.maxPartitionBytes", str(4 * 1024 * 1024))
        # Many small files share a split: Spark counts each file as this many bytes more when it
        # packs splits (default 4 MB, as much as a split), so every file of a micro-batch was a
        # task of its own and a Parquet file of its own in each table written. The collector
        # lands a file per request: a stream at 16 requests/s made 600 tasks and files per
        # batch, and fell behind. Opening a local or object-store file costs about this much.
        .config("spark.sql.files.openCostInBytes", str(64 * 1024))
        # A task's collected rows (a 4 MB split: ~10 MB of Arrow) go back in its status message
        # rather than through the block manager and a fetch: ~0.5 CPU-s less per million lines.
        # Spark caps it at the RPC message size and falls back above that.
        .config("spark.task.maxDirectResultSize", "64m")
        # Checkpoint logs through the FileSystem API: the default FileContext manager made Hadoop
        # spawn a `readlink` process for every rename on the local disk (~24 per micro-batch per
        # query); a rename on a POSIX file system is atomic either way.
        .config(
            "spark.sql.streaming.checkpointFileManagerClass",
            "org.apache.spark.sql.execution.streaming.checkpointing."
            "FileSystemBasedCheckpointFileManager",
        )
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextmanager
def scheduler_pool(spark: SparkSession, pool: str) -> Iterator[None]:
    """Run this thread's Spark jobs (and the streaming queries it starts) in `pool` of
    conf/spark-pools.xml. A local property of the thread: PySpark pins each Python thread to a
    JVM thread of its own."""
    context = spark.sparkContext
    before = context.getLocalProperty(POOL_PROPERTY)
    context.setLocalProperty(POOL_PROPERTY, pool)
    try:
        yield
    finally:
        context.setLocalProperty(POOL_PROPERTY, before)  # type: ignore[arg-type]


def release_plans() -> None:
    """Free the JVM objects that unreachable Python frames still pin.

    A PySpark DataFrame holds its JVM Dataset (and with it every plan of its query) until the
    Python object is freed. Frames caught in reference cycles are freed only by Python's cycle
    collector, which runs on Python allocations; a driver allocates little on the Python side, so
    the plans of many micro-batches piled up in the JVM heap: a 1-2 GB driver spent its time in
    full garbage collections (seen with jstat and a heap histogram: hundreds of live query
    executions, half a million plan nodes). Called after each micro-batch and downstream step.
    """
    gc.collect()
