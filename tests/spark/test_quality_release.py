"""A steward's release lets the rows waiting now pass the gate, and only those: rows that land
afterwards are judged again."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from expectations.frames import pending_silver
from pipelines.lakehouse.lake import Lake
from pipelines.ops.releases import release, releases
from tests.conftest import settings_for

# The lake writes with delta-spark.
pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("spark")]


def _rows(lake: Lake, ids: list[str]) -> None:
    lake.append_once(
        "silver.network", pa.table({"event_id": ids, "bytes_down": [-1] * len(ids)}), {}, stage="t"
    )


def test_release_passes_what_waits_now_and_nothing_after(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    lake = Lake(settings.paths.lake_root)
    _rows(lake, ["a", "b"])
    assert pending_silver(lake, settings, "network")["event_id"].to_list() == ["a", "b"]

    version = release(lake, settings, "silver.network")
    assert releases(settings)["silver.network"]["version"] == version == 0
    assert pending_silver(lake, settings, "network").height == 0

    _rows(lake, ["c"])
    assert pending_silver(lake, settings, "network")["event_id"].to_list() == ["c"]
    with pytest.raises(FileNotFoundError, match="silver.crm"):
        release(lake, settings, "silver.crm")
