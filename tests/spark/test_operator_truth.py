"""Against a generated operator: every bad record the generator injected is quarantined under
the matching reason, every valid event lands in silver once, drift is reported."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from pipelines.config import Settings
from pipelines.synthetic.operator import generate
from tests.spark.helpers import ingest, rows

pytestmark = [pytest.mark.spark, pytest.mark.slow]

# What each injected kind must be quarantined as.
EXPECTED_REASON = {
    "bad_json": "bad_json",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "unknown_event_type": "unknown_event_type",
    "unknown_schema_version": "unknown_schema_version",
    "future_event_time": "future_event_time",
    "duplicate": "duplicate",
    "junk_identifier": "junk_identifier",
}


def test_generated_operator_matches_truth(spark, settings: Settings) -> None:
    cfg = settings.generator.model_copy(
        update={"subscribers": 300, "days": 5, "files_per_source": 2}
    )
    generate(cfg, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root)
    ingest(spark, settings, settings.sources)
    truth = pq.read_table(settings.paths.truth_root / "events.parquet").to_pylist()

    expected = Counter(
        (t["source"], EXPECTED_REASON[t["kind"]]) for t in truth if t["kind"] in EXPECTED_REASON
    )
    got = Counter((q["source"], q["reason_code"]) for q in rows(settings, "silver.quarantine"))
    assert got == expected

    for source in settings.sources:
        silver_ids = [r["event_id"] for r in rows(settings, f"silver.{source}")]
        assert len(silver_ids) == len(set(silver_ids)), "no event id twice in silver"
        valid = {
            t["event_id"]
            for t in truth
            if t["source"] == source and t["kind"] in ("valid", "schema_drift")
        }
        assert set(silver_ids) == valid

    drifted = sum(t["kind"] == "schema_drift" for t in truth)
    drift = rows(settings, "silver.schema_drift")
    assert {d["field"] for d in drift} == {"loyalty_tier"}
    assert sum(d["events"] for d in drift) == drifted
