"""What the assets share in one Dagster process: the `cdp` resource (the conf folder and CDP_*
environment, so runs load the same settings as the `cdp` command), one Spark session, one Great
Expectations project, the promotion path, and the metadata every materialisation reports."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from pydantic import Field

from pipelines.config import DEFAULT_CONF_DIR, Settings, load_settings
from pipelines.lakehouse.catalog import event_time
from pipelines.lakehouse.lake import Lake
from pipelines.ops.status import data_clock, freshness_lag_minutes

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from expectations.runner import Outcome, Quality
    from pipelines.promotion import Promoter


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
    _promoter: Promoter | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.lake = Lake(self.settings.paths.lake_root, self.spark)

    def spark(self) -> SparkSession:
        from pipelines.lakehouse.spark import spark_session

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

    def promoter(self) -> Promoter:
        """The promotion path `cdp run` and `cdp stream` take, on this process's checks."""
        from pipelines.promotion import Promoter

        quality = self.quality()
        with self._lock:
            if self._promoter is None:
                self._promoter = Promoter(self.settings, self.lake, quality)
            return self._promoter

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
                lag = freshness_lag_minutes(newest, data_clock(self.lake, self.settings))
                meta["freshness_lag_minutes"] = dg.MetadataValue.float(lag)
        return meta


_RUNTIMES: dict[tuple[str, tuple[tuple[str, str], ...]], Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


class CdpResource(dg.ConfigurableResource):
    """The CDP configuration a Dagster run uses: the conf folder and the CDP_* overrides, read
    by `load_settings` exactly as the `cdp` command reads them. Every run in a process with the
    same configuration shares one runtime (one Spark session, one checks project)."""

    conf_dir: str = Field(description="The conf/ folder (engine.yaml, contracts, policies).")
    env: dict[str, str] = Field(
        default_factory=dict, description="CDP_* overrides, e.g. CDP_DATA_ROOT."
    )

    @classmethod
    def from_environment(cls, conf_dir: Path | None = None) -> CdpResource:
        """The configuration `cdp` would use here: --conf, $CDP_CONF_DIR or ./conf, and the
        CDP_* variables of this process."""
        env = {k: v for k, v in os.environ.items() if k.startswith("CDP_")}
        folder = Path(conf_dir or env.get("CDP_CONF_DIR") or DEFAULT_CONF_DIR).resolve()
        return cls(conf_dir=str(folder), env=env)

    def settings(self) -> Settings:
        return load_settings(Path(self.conf_dir), self.env)

    def runtime(self) -> Runtime:
        key = (self.conf_dir, tuple(sorted(self.env.items())))
        with _RUNTIMES_LOCK:
            if key not in _RUNTIMES:
                _RUNTIMES[key] = Runtime(self.settings())
            return _RUNTIMES[key]


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
        description=f"newest event {minutes} minutes behind the data clock (SLA {limit:g})"
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
