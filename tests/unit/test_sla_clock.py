"""Freshness SLAs measured against the data's own clock: a replayed or generated operator whose
events are weeks old is fresh when every table has caught up with the newest event, and a table
that lags the others is stale; in production (wall clock) the lag is against now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from pipelines.config import Settings
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.status import freshness_status
from tests.conftest import settings_for

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
NEWEST = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # the replayed data ends here


def _events(lake: Path, table: str, column: str, newest: datetime) -> None:
    layer, name = table.split(".")
    stamps = pa.array([newest - timedelta(hours=5), newest], pa.timestamp("us", tz="UTC"))
    write_deltalake(str(lake / layer / name), pa.table({column: stamps}))


def _lake(settings: Settings, gold_behind: timedelta) -> LakeReader:
    root = settings.paths.lake_root
    _events(root, "silver.network", "event_ts", NEWEST)
    _events(root, "silver.app", "event_ts", NEWEST - timedelta(minutes=20))
    _events(root, "silver.billing", "event_ts", NEWEST - timedelta(hours=3))
    _events(root, "silver.crm", "event_ts", NEWEST - timedelta(hours=2))
    _events(root, "gold.profiles", "last_event_ts", NEWEST - gold_behind)
    return LakeReader(root)


def _freshness(settings: Settings, lake: LakeReader) -> dict[str, tuple[float | None, bool]]:
    return {
        r.subject: (r.measured, r.ok)
        for r in freshness_status(lake, settings, now=NOW)
        if r.sla == "freshness"
    }


def test_old_data_that_is_caught_up_is_fresh_on_the_event_clock(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.profile.clock == "event_time"
    fresh = _freshness(settings, _lake(settings, gold_behind=timedelta(minutes=1)))
    assert fresh == {
        "silver.network": (0.0, True),
        "silver.app": (20.0, True),  # SLA 60 minutes
        "silver.billing": (180.0, True),  # SLA 1440
        "silver.crm": (120.0, True),
        "gold.profiles": (1.0, True),
    }


def test_a_table_behind_the_newest_event_is_stale_on_the_event_clock(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    fresh = _freshness(settings, _lake(settings, gold_behind=timedelta(days=2)))
    assert fresh["gold.profiles"] == (2880.0, False)  # SLA 1440 minutes
    assert fresh["silver.network"] == (0.0, True)


def test_the_wall_clock_measures_against_now(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    wall = settings.model_copy(
        update={"profile": settings.profile.model_copy(update={"clock": "wall_clock"})}
    )
    fresh = _freshness(wall, _lake(wall, gold_behind=timedelta(minutes=1)))
    behind = (NOW - NEWEST).total_seconds() / 60
    assert fresh["silver.network"] == (round(behind, 1), False)
    assert not any(ok for _, ok in fresh.values())
