"""Reference loads: same file is a no-op, a changed file is a new version, a bad file says where."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.ingest.reference import ReferenceFileError, load_reference
from pipelines.lakehouse.lake import Lake
from pipelines.synthetic.operator import write_reference

# Reference tables are written with delta-spark.
pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("spark")]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_reference(tmp_path / "ref")
    return tmp_path / "ref"


def test_reload_of_same_file_is_a_noop_and_change_is_new_version(
    settings: Settings, folder: Path
) -> None:
    lake = Lake(settings.paths.lake_root)
    first = {r.table: r for r in load_reference(lake, settings.reference, folder)}
    assert first["ref.tariffs"].changed and first["ref.tariffs"].version == 0
    again = {r.table: r for r in load_reference(lake, settings.reference, folder)}
    assert not any(r.changed for r in again.values())
    assert lake.version("ref.tariffs") == 0

    path = folder / "tariffs.csv"
    path.write_text(path.read_text() + "T-NEW,New,10000.00,1.0,prepaid,\n")
    load_reference(lake, settings.reference, folder)
    assert lake.version("ref.tariffs") == 1 and lake.version("ref.products") == 0
    tariffs = {r["tariff_id"]: r for r in lake.read_arrow("ref.tariffs").to_pylist()}
    assert tariffs["T-NEW"]["monthly_fee"] == Decimal("10000.00")
    old = lake.table("ref.tariffs", version=0)
    assert old is not None and "T-NEW" not in old.to_pyarrow_table().column("tariff_id").to_pylist()


def test_bad_value_names_file_line_and_column(settings: Settings, folder: Path) -> None:
    path = folder / "segments.csv"
    path.write_text(
        path.read_text().replace("SEG-MID,Mid value,40000.00", "SEG-MID,Mid value,forty")
    )
    with pytest.raises(
        ReferenceFileError,
        match=r"segments\.csv:3: column min_monthly_spend: "
        r"expected decimal, got 'forty'",
    ):
        load_reference(Lake(settings.paths.lake_root), settings.reference, folder)


def test_missing_column_is_named(settings: Settings, folder: Path) -> None:
    path = folder / "products.csv"
    path.write_text(
        path.read_text().replace("product_id,name,category,price", "id,name,category,price")
    )
    with pytest.raises(ReferenceFileError, match=r"missing column\(s\) \['product_id'\]"):
        load_reference(Lake(settings.paths.lake_root), settings.reference, folder)


def test_an_optional_column_may_be_left_out_of_the_file_a_required_one_not(
    settings: Settings, folder: Path
) -> None:
    """A file written before `term_months` existed still loads (no term for anyone); a file
    without a required column is refused naming it."""
    path = folder / "tariffs.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(",".join(ln.split(",")[:5]) for ln in lines) + "\n")
    lake = Lake(settings.paths.lake_root)
    load_reference(lake, settings.reference, folder)
    tariffs = lake.read_arrow("ref.tariffs").to_pylist()
    assert len(tariffs) == len(lines) - 1
    assert all(t["term_months"] is None for t in tariffs)
    path.write_text("\n".join(",".join(ln.split(",")[:4]) for ln in lines) + "\n")
    with pytest.raises(ReferenceFileError, match=r"missing column\(s\) \['kind'\]"):
        load_reference(lake, settings.reference, folder)
