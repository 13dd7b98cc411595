"""Bronze and silver are plain Delta tables: deltalake, Polars and DuckDB read the same rows."""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
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


SKIP_COLUMNS = {"raw_line", "line_id", "event_id"}


def _filter_column(dt: DeltaTable) -> tuple[str, object] | None:
    """A non-key column with several values, and its most frequent value: the filter an
    analyst would apply (a tariff, a reason code, an event type)."""
    table = dt.to_pyarrow_table()
    for field in table.schema:
        t = field.type
        if field.name in SKIP_COLUMNS or field.name.endswith("_id") and field.name != "tariff_id":
            continue
        if not (pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)):
            continue
        counts = pc.value_counts(table.column(field.name).drop_null()).to_pylist()
        if len(counts) >= 2:
            top = max(counts, key=lambda c: c["counts"])
            return field.name, top["values"]
    return None


def _counts(spark: Any, path: str, column: str, op: str, value: object) -> dict[str, int]:
    """The rows matching `column op value` as each reader counts them."""
    from pyspark.sql import functions as F

    dt = DeltaTable(path)
    ops = {"=": lambda a, b: a == b, ">=": lambda a, b: a >= b}
    con = duckdb.connect()
    con.register("snapshot", dt.to_pyarrow_dataset())
    duck = con.execute(f'SELECT count(*) FROM snapshot WHERE "{column}" {op} ?', [value])
    return {
        "spark": spark.read.format("delta").load(path).where(ops[op](F.col(column), value)).count(),
        "pyarrow": dt.to_pyarrow_dataset().count_rows(filter=ops[op](pc.field(column), value)),
        "polars": pl.scan_delta(path).filter(ops[op](pl.col(column), value)).collect().height,
        "duckdb": duck.fetchone()[0],  # type: ignore[index]
        "pandas": len(dt.to_pandas(filters=[(column, op, value)])),
    }


def test_filtered_reads_agree_across_engines(spark: Any, operator: dict[str, Any]) -> None:
    """Every table of a streamed operator, filtered on a non-key column, gives the same rows
    through Spark, delta-rs/pyarrow, Polars, DuckDB and pandas: file statistics never make a
    reader skip a file that holds matching rows."""
    root = operator["settings"].paths.lake_root
    checked = []
    for path in sorted(p.parent for p in root.glob("*/*/_delta_log")):
        dt = DeltaTable(str(path))
        picked = _filter_column(dt)
        if picked is None:
            continue
        column, value = picked
        counts = _counts(spark, str(path), column, "=", value)
        assert len(set(counts.values())) == 1, (path.name, column, value, counts)
        assert 0 < counts["spark"] < dt.to_pyarrow_dataset().count_rows(), (path, column)
        checked.append(f"{path.parent.name}.{path.name}")
    layers = {name.split(".")[0] for name in checked}
    assert {"bronze", "silver", "gold"} <= layers, checked
    # the filters the wrong answers were reported on: a tariff, and a churn-risk threshold
    profiles = pl.read_delta(str(root / "gold" / "profiles"))
    tariff = profiles.get_column("tariff_id").drop_nulls().mode()[0]
    churn = profiles.get_column("churn_risk").median()
    for column, op, value in (("tariff_id", "=", tariff), ("churn_risk", ">=", churn)):
        counts = _counts(spark, str(root / "gold" / "profiles"), column, op, value)
        assert len(set(counts.values())) == 1 and counts["spark"] > 0, (column, counts)
