"""Re-running over the same input adds nothing; repeated event ids are deduplicated across
batches; a broken line resent corrected under the same id is kept."""

from __future__ import annotations

import pytest

from pipelines.config import Settings
from pipelines.lakehouse.lake import Lake
from tests.spark.helpers import event, ingest, land, rows

pytestmark = pytest.mark.spark

LOC = {"msisdn": "998901112233", "cell_id": "TAS-0001", "region": "Tashkent"}


def _versions(settings: Settings) -> dict[str, int | None]:
    lake = Lake(settings.paths.lake_root)
    names = ["bronze.network", "silver.network", "silver.quarantine", "silver.schema_drift"]
    return {t: lake.version(t) for t in names}


def test_second_run_over_same_input_adds_nothing(spark, settings: Settings) -> None:
    land(
        settings,
        "network",
        "n-1.jsonl",
        [event("network", "location", f"n{i}", **LOC) for i in range(50)] + ["{oops"],
    )
    ingest(spark, settings, ["network"])
    before = _versions(settings)
    ingest(spark, settings, ["network"])
    assert _versions(settings) == before
    assert len(rows(settings, "silver.network")) == 50
    assert len(rows(settings, "silver.quarantine")) == 1


def test_ids_already_in_silver_are_duplicates_in_a_later_batch(spark, settings: Settings) -> None:
    land(
        settings,
        "network",
        "n-1.jsonl",
        [event("network", "location", "a", **LOC), event("network", "location", "b", **LOC)],
    )
    ingest(spark, settings, ["network"])
    land(
        settings,
        "network",
        "n-2.jsonl",
        [event("network", "location", "b", **LOC), event("network", "location", "c", **LOC)],
    )
    ingest(spark, settings, ["network"])
    assert sorted(r["event_id"] for r in rows(settings, "silver.network")) == ["a", "b", "c"]
    [dup] = rows(settings, "silver.quarantine")
    assert (dup["event_id"], dup["reason_code"]) == ("b", "duplicate")
    assert dup["reason"] == 'duplicate event_id "b" (already in silver)'


def test_corrected_resend_wins_over_broken_first_copy(spark, settings: Settings) -> None:
    broken = event("network", "location", "x", **{**LOC, "msisdn": "not-a-number"})
    fixed = event("network", "location", "x", **LOC)
    land(settings, "network", "n-1.jsonl", [broken, fixed, fixed])
    ingest(spark, settings, ["network"])
    [kept] = rows(settings, "silver.network")
    assert kept["msisdn"] == "998901112233"
    reasons = sorted(r["reason_code"] for r in rows(settings, "silver.quarantine"))
    assert reasons == ["duplicate", "wrong_type"]


def test_new_files_after_a_run_are_picked_up_incrementally(spark, settings: Settings) -> None:
    land(settings, "network", "n-1.jsonl", [event("network", "location", "a", **LOC)])
    ingest(spark, settings, ["network"])
    land(settings, "network", "n-2.jsonl", [event("network", "location", "b", **LOC)])
    ingest(spark, settings, ["network"])
    bronze = sorted(rows(settings, "bronze.network"), key=lambda r: r["event_id"])
    assert [r["event_id"] for r in bronze] == ["a", "b"]
    silver = sorted(rows(settings, "silver.network"), key=lambda r: r["event_id"])
    assert [r["event_id"] for r in silver] == ["a", "b"]
    # Each micro-batch's lines carry its own ingest time and batch id, in bronze and silver.
    a, b = bronze
    assert a["ingest_ts"] < b["ingest_ts"] and a["batch_id"] != b["batch_id"]
    assert [r["_ingest_ts"] for r in silver] == [a["ingest_ts"], b["ingest_ts"]]


def test_a_resent_file_is_all_duplicates_and_new_ids_in_it_still_land(
    spark, settings: Settings
) -> None:
    # A source resending a whole file, with one new event and one repeat of its own.
    land(
        settings,
        "network",
        "n-1.jsonl",
        [event("network", "location", i, **LOC) for i in ("a", "b", "b")],
    )
    ingest(spark, settings, ["network"])
    land(
        settings,
        "network",
        "n-2.jsonl",
        [event("network", "location", i, **LOC) for i in ("a", "c")],
    )
    ingest(spark, settings, ["network"])
    assert sorted(r["event_id"] for r in rows(settings, "silver.network")) == ["a", "b", "c"]
    dups = sorted((r["event_id"], r["reason"]) for r in rows(settings, "silver.quarantine"))
    assert dups == [
        ("a", 'duplicate event_id "a" (already in silver)'),
        ("b", 'duplicate event_id "b" (repeated earlier in this batch)'),
    ]


def test_many_small_landing_files_make_few_table_files(spark, settings: Settings) -> None:
    """The collector lands a file per request; one micro-batch over 200 of them must not write
    a Parquet file (and run a task) per landing file in each table, or a stream at a few hundred
    requests per batch spends its time opening and closing files."""
    for f in range(200):
        lines = [event("network", "location", f"f{f}-{i}", **LOC) for i in range(5)]
        land(settings, "network", f"n-{f:03}.jsonl", lines)
    ingest(spark, settings, ["network"])
    assert len(rows(settings, "silver.network")) == 1000
    lake = Lake(settings.paths.lake_root)
    for table in ("bronze.network", "silver.network"):
        assert lake.file_count(table) <= 8, table
