"""Incremental reads through the Change Data Feed: exactly the rows inserted after a version,
whatever rewrites (deletes, compaction) happened in between; and idempotent writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipelines.lakehouse.lake import Lake

pytestmark = pytest.mark.spark


def _append(lake: Lake, n: int, version: int) -> None:
    rows = pa.table({"event_id": [f"e{version}-{i}" for i in range(n)]})
    lake.append("silver.t", rows, app_id="test", txn_version=version, stage="test")


def test_changes_since_a_version(spark: Any, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    for v in range(4):
        _append(lake, 3, v)
    changes = lake.changes(spark, "silver.t", 1)
    got = sorted(r.event_id for r in changes.frame.collect())
    assert got == [f"e{v}-{i}" for v in (2, 3) for i in range(3)]
    assert changes.to_version == 3
    assert lake.changes(spark, "silver.t", 3).frame.count() == 0


def test_changes_skip_rewrites_in_the_range(spark: Any, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    for v in range(3):
        _append(lake, 3, v)
    dt = lake.table("silver.t")
    assert dt is not None
    dt.delete("event_id = 'e2-0'")  # rewrites the file of version 2 without that row
    lake.recluster("silver.t", "event_id", stage="test")  # compaction: no rows change
    _append(lake, 3, 3)
    got = sorted(r.event_id for r in lake.changes(spark, "silver.t", 1).frame.collect())
    # version 2's rows as they were appended, then version 3's: none replayed by the rewrites
    assert got == [f"e{v}-{i}" for v in (2, 3) for i in range(3)]
    without_jvm = lake.appended("silver.t", 1, lake.version("silver.t") or 0)
    assert sorted(without_jvm.column("event_id").to_pylist()) == got


def test_replayed_writes_are_skipped(spark: Any, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    _append(lake, 3, 0)
    rows = pa.table({"event_id": ["x"]})
    assert not lake.append("silver.t", rows, app_id="test", txn_version=0, stage="test")
    # a write advancing two sources at once, replayed after a crash, lands once
    both = {"a<-silver.x": 4, "b<-silver.y": 7}
    assert lake.append_once("silver.t", rows, both, stage="test")
    assert not lake.append_once("silver.t", rows, both, stage="test")
    assert lake.committed("silver.t", "a<-silver.x") == 4
    assert lake.committed("silver.t", "b<-silver.y") == 7
    assert lake.append_once("silver.t", rows, {"a<-silver.x": 5, "b<-silver.y": 7}, stage="t")
    assert lake.committed("silver.t", "a<-silver.x") == 5
    assert lake.committed("silver.t", "b<-silver.y") == 7
    assert lake.read_arrow("silver.t").num_rows == 5


def test_upsert_replaces_and_deletes_by_key(spark: Any, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    first = pa.table({"person_id": ["p1", "p2", "p3"], "tier": ["a", "b", "c"]})
    lake.upsert("gold.p", first, "person_id", delete_keys=[], stage="test", txns={"g": 1})
    change = pa.table({"person_id": ["p2", "p4"], "tier": ["B", "d"]})
    lake.upsert("gold.p", change, "person_id", delete_keys=["p3"], stage="test", txns={"g": 2})
    lake.upsert("gold.p", change, "person_id", delete_keys=["p1"], stage="test", txns={"g": 2})
    got = {r["person_id"]: r["tier"] for r in lake.read_arrow("gold.p").to_pylist()}
    assert got == {"p1": "a", "p2": "B", "p4": "d"}
    assert lake.committed("gold.p", "g") == 2


def test_compaction_keeps_rows_and_vacuum_removes_only_what_retention_allows(
    spark: Any, tmp_path: Path
) -> None:
    lake = Lake(tmp_path)
    for v in range(4):
        _append(lake, 3, v)
    before = lake.version("silver.t")
    assert before is not None and lake.file_count("silver.t") == 4  # one file per append
    assert lake.compact("silver.t", stage="test") == (4, 1)
    after = lake.version("silver.t")
    assert after == before + 1
    assert lake.read_arrow("silver.t").num_rows == 12
    assert lake.appended("silver.t", before, after).num_rows == 0  # no new rows in the feed
    # Within the 7-day retention the replaced files stay: the old version still reads.
    assert lake.vacuum("silver.t") == 0
    assert lake.read_arrow("silver.t", version=before).num_rows == 12
    spark.sql(
        f"ALTER TABLE delta.`{lake.uri('silver.t')}` "
        "SET TBLPROPERTIES ('delta.deletedFileRetentionDuration' = 'interval 0 seconds')"
    )
    assert lake.vacuum("silver.t") == 4  # the four replaced files, not the compacted one
    assert lake.read_arrow("silver.t").num_rows == 12
