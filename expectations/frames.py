"""The rows each suite validates, as pandas frames with only the columns the suite reads.

- silver tables: the rows waiting for promotion (added since the version gold reflects), so a
  bad batch is judged before identity and profiles see it;
- bronze and quarantine: the last day of ingestion;
- source health: one row per source (landed and quarantined lines over the last day, the rate
  and the SLA limit);
- gold and reference tables: the table as it stands (the identity map: current tenures, with
  whether the person has a profile).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import polars as pl

from expectations.suites import MAP_PERSONS, SOURCE_HEALTH, Suite
from pipelines.config import Settings
from pipelines.lakehouse.catalog import DAILY, MAP, PROFILES, QUARANTINE, silver_table
from pipelines.lakehouse.lake import Lake
from pipelines.ops.releases import released_version, releases
from pipelines.profile.facts import COUNTERS
from pipelines.profile.state import silver_ranges

DAY = timedelta(days=1)


def _pandas(frame: pl.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Only the suite's columns; decimals as floats (GX compares numbers, not Decimals)."""
    frame = frame.select([c for c in columns if c in frame.columns])
    decimals = [c for c, t in frame.schema.items() if isinstance(t, pl.Decimal)]
    if decimals:
        frame = frame.with_columns(pl.col(decimals).cast(pl.Float64))
    return frame.to_pandas()


def pending_silver(
    lake: Lake, settings: Settings, source: str, until: dict[str, int] | None = None
) -> pl.DataFrame:
    """The silver rows of `source` that gold has not taken in yet (and no steward released),
    up to `until`'s version of its table."""
    table = silver_table(settings.contract(source))
    if not lake.exists(table):
        return pl.DataFrame()
    span = silver_ranges(lake, settings).get(source)  # None: gold does not read this source
    if not span:
        return pl.from_arrow(lake.arrow_schema(table).empty_table())  # type: ignore[return-value]
    done, target = span
    if until and table in until:
        target = min(target, until[table])
    released = released_version(settings, table)
    if released is not None and (done is None or released > done):
        done = min(released, target)
    return pl.from_arrow(lake.appended(table, done, target))  # type: ignore[return-value]


def source_health(lake: Lake, settings: Settings, now: datetime | None = None) -> pl.DataFrame:
    """Per source over the last day: lines that reached silver, lines quarantined, the rate and
    the SLA limit."""
    since = (now or datetime.now(UTC)) - DAY
    rel = releases(settings)
    rows = []
    for s in settings.sources:
        table = silver_table(settings.contract(s))
        start = since
        if (at := rel.get(table, {}).get("at")) is not None:
            start = max(since, datetime.fromisoformat(str(at)))
        valid = (
            lake.read_polars(table, ["event_id"], pl.col("_ingest_ts") >= start).height
            if lake.exists(table)
            else 0
        )
        bad = (
            lake.read_polars(
                QUARANTINE, ["source"], (pl.col("ingest_ts") >= start) & (pl.col("source") == s)
            ).height
            if lake.exists(QUARANTINE)
            else 0
        )
        landed = valid + bad
        rows.append(
            {
                "source": s,
                "landed": landed,
                "quarantined": bad,
                "quarantine_rate": bad / landed if landed else 0.0,
                "max_rate": settings.sla.max_quarantine_rate(s),
            }
        )
    return pl.DataFrame(rows)


def frame_for(
    lake: Lake, settings: Settings, suite: Suite, until: dict[str, int] | None = None
) -> pd.DataFrame | None:
    """The rows `suite` validates now (silver: up to `until`), or None when its table does not
    exist yet."""
    table = suite.table
    if table == SOURCE_HEALTH:
        return _pandas(source_health(lake, settings), suite.columns)
    if table == MAP_PERSONS:
        if not lake.exists(MAP):
            return None
        current = lake.read_polars(MAP, ["person_id"], pl.col("valid_to").is_null()).unique()
        persons = (
            lake.read_polars(PROFILES, ["person_id"]).get_column("person_id")
            if lake.exists(PROFILES)
            else pl.Series("person_id", [], pl.String)
        )
        current = current.with_columns(has_profile=pl.col("person_id").is_in(persons.implode()))
        return _pandas(current, suite.columns)
    by_silver = {silver_table(settings.contract(s)): s for s in settings.sources}
    if table in by_silver:
        frame = pending_silver(lake, settings, by_silver[table], until)
        return None if frame.width == 0 else _pandas(frame, suite.columns)
    if not lake.exists(table):
        return None
    since = datetime.now(UTC) - DAY
    if table == MAP:
        return _pandas(lake.read_polars(table, where=pl.col("valid_to").is_null()), suite.columns)
    if table == DAILY:  # as it is read: summed per identifier, day and tenure (corrections
        # of a re-derived day are negative rows that cancel what they replace)
        rows = lake.read_polars(table)
        keys = ["id_type", "id_value", "day", "tenure"]
        return _pandas(rows.group_by(keys).agg(pl.col(COUNTERS).sum()), suite.columns)
    if table.startswith("bronze.") or table == QUARANTINE:  # the last day of ingestion
        recent = lake.read_polars(table, suite.columns, pl.col("ingest_ts") >= since)
        return _pandas(recent, suite.columns)
    return _pandas(lake.read_polars(table, suite.columns), suite.columns)
