"""Status for stewards over HTTP: contracts with their health and drift, SLAs measured now (and
exported to Prometheus), alerts; refused to channel keys. A source steward sees, releases and is
alerted for their own source only."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pipelines.ops.releases import released_version
from pipelines.ops.status import Alerts

pytestmark = [pytest.mark.api]


def _get(served: dict[str, Any], path: str, key: str) -> Any:
    return served["client"].get(path, headers={"X-API-Key": served["keys"][key]})


def test_contract_status_names_steward_versions_quarantine_and_drift(
    served: dict[str, Any],
) -> None:
    response = _get(served, "/v1/status/contracts", "steward")
    assert response.status_code == 200
    by_source = {c["source"]: c for c in response.json()}
    settings = served["settings"]
    assert set(by_source) == set(settings.sources)
    billing = by_source["billing"]
    assert billing["steward_email"] == settings.contract("billing").steward.email
    assert billing["versions"] == [{"version": 1, "status": "active"}]
    assert billing["rows_in_last_day"] > 0
    assert sum(billing["quarantined_last_day"].values()) > 0  # the generator's bad records
    drifted = {f["field"] for c in by_source.values() for f in c["drift"]}
    assert drifted, "the synthetic operator sends an unannounced field"
    first = next(f for c in by_source.values() for f in c["drift"])
    assert first["first_seen"] and first["example_event_id"] and first["events"] >= 1


def test_sla_status_measures_every_sla_and_exports_gauges(served: dict[str, Any]) -> None:
    lookup = served["client"].get(
        "/v1/profiles/msisdn/998000000000", headers={"X-API-Key": served["keys"]["mobile_app"]}
    )
    assert lookup.status_code in (404, 200)
    response = _get(served, "/v1/status/sla", "steward")
    assert response.status_code == 200
    results = response.json()
    kinds = {(r["sla"], r["subject"]) for r in results}
    settings = served["settings"]
    for table in settings.sla.freshness_minutes:
        assert ("freshness", table) in kinds
    for source in settings.sources:
        assert ("quarantine_rate", source) in kinds
    assert any(r["sla"] == "end_to_end_lag" for r in results)
    assert any(r["sla"] == "api_p99" for r in results)
    rates = [r for r in results if r["sla"] == "quarantine_rate"]
    assert all(0 <= r["measured"] <= 1 and r["ok"] == (r["measured"] <= r["limit"]) for r in rates)
    metrics = served["client"].get("/metrics").text
    assert 'cdp_sla_ok{sla="quarantine_rate",subject="billing"}' in metrics
    assert 'cdp_sla_measured{sla="freshness",subject="gold.profiles"}' in metrics


def test_alerts_are_listed_for_stewards_and_refused_to_channels(served: dict[str, Any]) -> None:
    Alerts(served["settings"].database_url).raise_new(served["lake"], served["settings"])
    response = _get(served, "/v1/status/alerts?source=app", "steward")
    assert response.status_code == 200
    alerts = response.json()
    assert alerts and all(a["source"] == "app" for a in alerts)
    assert all(a["steward"] == served["settings"].contract("app").steward.email for a in alerts)
    for path in ("/v1/status/alerts", "/v1/status/sla", "/v1/status/contracts"):
        refused = _get(served, path, "mobile_app")
        assert refused.status_code == 403 and "steward" in refused.json()["detail"]


def test_a_source_steward_sees_and_releases_their_source_only(served: dict[str, Any]) -> None:
    """The billing steward sees billing's contract and alerts and may release billing past
    the gate; crm's are not theirs, nor is the audit of lookups (the consent steward's)."""
    settings, lake = served["settings"], served["lake"]
    mine = _get(served, "/v1/status/contracts", "steward:billing").json()
    assert [c["source"] for c in mine] == ["billing"]
    assert _get(served, "/v1/status/alerts?source=crm", "steward:billing").status_code == 403
    alerts = _get(served, "/v1/status/alerts", "steward:billing").json()
    assert {a["source"] for a in alerts} <= {"billing"}

    def post(path: str, key: str) -> Any:
        return served["client"].post(path, headers={"X-API-Key": served["keys"][key]})

    refused = post("/v1/status/sources/crm/release", "steward:billing")
    assert refused.status_code == 403 and "crm's steward" in refused.json()["detail"]
    assert released_version(settings, "silver.crm") is None
    done = post("/v1/status/sources/billing/release", "steward:billing")
    assert done.status_code == 200, done.text
    assert done.json()["released_version"] == lake.version("silver.billing")
    assert released_version(settings, "silver.billing") == lake.version("silver.billing")
    assert post("/v1/status/sources/nope/release", "steward").status_code == 404

    person = lake.read_arrow("gold.profiles", ["person_id"]).column(0)[0].as_py()
    audit = f"/v1/audit?person={person}"
    assert _get(served, audit, "steward:billing").status_code == 403
    assert _get(served, audit, "steward:consent").status_code == 200
    assert _get(served, "/v1/status/contracts", "steward:consent").json() == []


def test_a_source_steward_streams_the_ops_alerts_of_their_source_only(
    served: dict[str, Any],
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = {}
    for source in ("crm", "billing"):  # crm's first: it would arrive before billing's
        (alert,) = Alerts(served["settings"].database_url).record(
            [
                {
                    "source": source,
                    "kind": "schema_drift",
                    "subject": f"field_{tag}",
                    "steward": f"{source}-steward@example.com",
                    "detail": {"message": f"{source} sends field_{tag}"},
                }
            ],
            datetime.now(UTC),
        )
        ids[source] = f"alert-{alert['alert_id']}"
    seen: list[str] = []
    url = f"{served['server'].url}/v1/events/stream?types=ops.schema_drift"
    key = {"X-API-Key": served["keys"]["steward:billing"]}
    with httpx.stream("GET", url, headers=key, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:])["event_id"])
                if ids["billing"] in seen:
                    break
    assert ids["billing"] in seen and ids["crm"] not in seen


def test_the_pipeline_view_names_the_hop_whose_oldest_item_has_waited_longest(
    served: dict[str, Any],
) -> None:
    """Gold holds every silver row of the served copy and the process serves gold's newest
    version; a billing file landed a day ago and never ingested is then what is behind (other
    tests' collector files, minutes old, wait too), and channel keys are refused."""
    import os
    import time

    assert _get(served, "/v1/status/pipeline", "mobile_app").status_code == 403
    settings, lake = served["settings"], served["lake"]
    now = _get(served, "/v1/status/pipeline", "steward:billing").json()
    by_hop = {(h["hop"], h["subject"]): h for h in now["hops"]}
    for source in settings.profile.anchors:
        assert by_hop[("silver -> gold", source)]["waiting"] == 0
    serving = by_hop[("gold -> serving", "gold.profiles")]
    assert serving["waiting"] == 0
    assert serving["detail"] == f"serving version {lake.version('gold.profiles')}"
    landed_before = by_hop[("landing -> bronze", "billing")]["waiting"]

    folder = settings.paths.landing_root / "billing"
    folder.mkdir(parents=True, exist_ok=True)
    landed = folder / "late-drop.jsonl"
    landed.write_text('{"event_id": "x"}\n')
    day_ago = time.time() - 86400
    os.utime(landed, (day_ago, day_ago))
    try:
        late = _get(served, "/v1/status/pipeline", "steward").json()
    finally:
        landed.unlink()
    assert late["behind"] == {"hop": "landing -> bronze", "subject": "billing"}
    hop = next(
        h for h in late["hops"] if h["hop"] == "landing -> bronze" and h["subject"] == "billing"
    )
    assert hop["waiting"] == landed_before + 1 and hop["unit"] == "files"
    assert 86400 <= hop["oldest_s"] < 86500
