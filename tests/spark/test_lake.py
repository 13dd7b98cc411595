"""Incremental reads of append-only tables: exactly the rows appended after a version, and a
clear refusal when the range holds a rewrite (replaying it would duplicate or lose rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipelines.lake import Lake

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


def test_changes_refuse_a_rewrite_in_the_range(spark: Any, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    for v in range(3):
        _append(lake, 3, v)
    dt = lake.table("silver.t")
    assert dt is not None
    dt.delete("event_id = 'e2-0'")
    with pytest.raises(RuntimeError, match="version 3 is a DELETE, not an append"):
        lake.changes(spark, "silver.t", 1)
    _append(lake, 3, 3)  # later appends are readable again from past the rewrite
    assert lake.changes(spark, "silver.t", 3).frame.count() == 3
