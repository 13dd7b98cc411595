"""Bronze and silver are plain Delta tables: deltalake, Polars and DuckDB read the same rows."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from pipelines.config import Settings
from tests.spark.helpers import event, ingest, land

pytestmark = pytest.mark.spark


def test_tables_read_back_identically_everywhere(spark, settings: Settings) -> None:
    lines = [
        event(
            "app",
            "login",
            f"a{i}",
            app_user_id=f"u{i}",
            msisdn=f"99890111{i:04d}",
            email=f"user{i}@mail.uz",
            platform="ios",
        )
        for i in range(30)
    ]
    land(settings, "app", "app-1.jsonl", [*lines, "not json"])
    ingest(spark, settings, ["app"])
    for table, key in (("bronze/app", "line_id"), ("silver/app", "event_id")):
        path = str(settings.paths.lake_root / table)
        via_delta = DeltaTable(path).to_pyarrow_table().sort_by(key)
        via_polars = pl.read_delta(path).sort(key).to_arrow()
        # DuckDB's delta extension is downloaded at run time (not possible here): it scans the
        # table's current snapshot through delta-rs' Arrow dataset instead.
        con = duckdb.connect()
        con.register("snapshot", DeltaTable(path).to_pyarrow_dataset())
        via_duckdb = con.sql(f"SELECT * FROM snapshot ORDER BY {key}").to_arrow_table()
        assert via_delta.num_rows == via_polars.num_rows == via_duckdb.num_rows
        assert via_delta.to_pylist() == via_polars.to_pylist() == via_duckdb.to_pylist()
    spark_rows = spark.read.parquet(
        *DeltaTable(str(settings.paths.lake_root / "silver/app")).file_uris()
    ).count()
    assert spark_rows == 30
