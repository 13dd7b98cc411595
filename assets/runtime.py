"""What the assets share in one Dagster process: the settings they were built for, one Spark
session, one Great Expectations project, and the metadata every materialisation reports."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from pipelines.catalog import event_time
from pipelines.config import Settings
from pipelines.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from expectations.runner import Outcome, Quality


def key_of(table: str) -> dg.AssetKey:
    """`silver.network` -> AssetKey(["silver", "network"])."""
    return dg.AssetKey(table.split("."))


@dataclass
class Runtime:
    """Settings, lake and the lazily built engines of one code location."""

    settings: Settings
    lake: Lake = field(init=False)
    _spark: SparkSession | None = None
    _quality: Quality | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.lake = Lake(self.settings.paths.lake_root, self.spark)

    def spark(self) -> SparkSession:
        from pipelines.spark import spark_session

        with self._lock:
            if self._spark is None or self._spark.sparkContext._jsc is None:
                self._spark = spark_session(self.settings.engine, app_name="cdp-dagster")
            return self._spark

    def quality(self) -> Quality:
        from expectations.runner import Quality

        with self._lock:
            if self._quality is None:
                self._quality = Quality(self.settings, self.lake)
            return self._quality

    def table_metadata(self, table: str) -> dict[str, Any]:
        """Rows, Delta version and newest event time of `table` (empty when it does not exist)."""
        dt = self.lake.table(table)
        if dt is None:
            return {"exists": False}
        meta: dict[str, Any] = {
            "rows": dg.MetadataValue.int(int(dt.count())),
            "delta_version": dg.MetadataValue.int(dt.version()),
            "path": dg.MetadataValue.path(self.lake.uri(table)),
        }
        column = event_time(table)
        names = {f.name for f in self.lake.arrow_schema(table)}
        if column and column in names:
            newest = self.lake.read_polars(table, [column]).select(pl.col(column).max()).item()
            if newest is not None:
                meta["newest_event"] = dg.MetadataValue.timestamp(newest)
                lag = (datetime.now(UTC) - newest).total_seconds() / 60
                meta["freshness_lag_minutes"] = dg.MetadataValue.float(round(lag, 1))
        return meta


FRESHNESS_CHECK = "freshness_within_sla"


def freshness_result(rt: Runtime, table: str) -> dg.AssetCheckResult:
    """Newest event time against the table's freshness SLA (a warning: stale data still serves)."""
    limit = rt.settings.sla.freshness_minutes[table]
    meta = rt.table_metadata(table)
    lag = meta.get("freshness_lag_minutes")
    minutes = lag.value if isinstance(lag, dg.FloatMetadataValue) else None
    return dg.AssetCheckResult(
        asset_key=key_of(table),
        check_name=FRESHNESS_CHECK,
        passed=minutes is not None and minutes <= limit,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"newest event {minutes} minutes old (SLA {limit:g})"
        if minutes is not None
        else "no events yet",
        metadata={"lag_minutes": minutes, "limit_minutes": limit},
    )


def check_result(outcome: Outcome, table: str, check: str = "expectations") -> dg.AssetCheckResult:
    """A suite's outcome as a Dagster check result: failures named, with counts and examples."""
    failures = [str(f) for f in outcome.failures]
    return dg.AssetCheckResult(
        asset_key=key_of(table),
        check_name=check,
        passed=not outcome.failures,
        severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
        description=(outcome.skipped or "; ".join(failures) or "every expectation holds")[:2000],
        metadata={
            "rows": dg.MetadataValue.int(outcome.rows),
            "expectations": dg.MetadataValue.int(outcome.evaluated),
            "failed": dg.MetadataValue.int(len(outcome.failures)),
            "failed_blocking": dg.MetadataValue.int(len(outcome.blocking)),
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures) or "none"),
        },
    )
