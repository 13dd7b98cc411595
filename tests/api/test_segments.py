"""Segments over HTTP for marketing: preview counts match the snapshot, bad rules get a 422
naming the node, saved segments keep every version, other roles are refused."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import polars as pl
import pytest

from pipelines.lakehouse.catalog import PROFILES
from tests.api.conftest import call, create_segment, may_use

pytestmark = pytest.mark.api
RULE = {
    "and": [
        {"attr": "churn_risk", "op": ">=", "value": 0.3},
        {"not": {"attr": "value_segment", "op": "is_null"}},
    ]
}


def test_preview_counts_members_and_reachable_ones_on_the_snapshot(served: dict[str, Any]) -> None:
    profiles = served["lake"].read_polars(PROFILES)
    # A rule decides only on values the person consented to: churn_risk is a profiling attribute.
    match = profiles.filter(
        (pl.col("churn_risk") >= 0.3)
        & may_use(served, "churn_risk")
        & pl.col("value_segment").is_not_null()
        & may_use(served, "value_segment")
    )
    reachable = match.filter(pl.col("consent_marketing_granted").fill_null(False))
    # The operator has people the rule would match on values they did not consent to.
    unguarded = profiles.filter(
        (pl.col("churn_risk") >= 0.3) & pl.col("value_segment").is_not_null()
    )
    assert match.height < unguarded.height
    r = call(
        served, "POST", "/v1/segments/preview", "marketing", {"purpose": "marketing", "rule": RULE}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["members"] == match.height > 0
    assert body["reachable"] == reachable.height
    assert set(body["sample"]) <= set(reachable["person_id"])


@pytest.mark.parametrize(
    ("body", "node"),
    [
        (
            {"purpose": "marketing", "rule": {"and": [{"attr": "iban", "op": "is_null"}]}},
            "rule.and[0].attr",
        ),
        (
            {
                "purpose": "marketing",
                "rule": {"attr": "churn_risk", "op": ">", "value": "1 OR 1=1"},
            },
            "rule.value",
        ),
        (
            {
                "purpose": "marketing",
                "rule": {"attr": "value_segment; DROP TABLE profiles", "op": "is_null"},
            },
            "rule.attr",
        ),
        ({"purpose": "spam", "rule": RULE}, "purpose"),
    ],
)
def test_bad_rules_get_a_422_naming_the_node(
    served: dict[str, Any], body: dict[str, Any], node: str
) -> None:
    r = call(served, "POST", "/v1/segments/preview", "marketing", body)
    assert r.status_code == 422 and r.json()["field"] == node, r.text


def test_saved_segments_keep_every_version(served: dict[str, Any]) -> None:
    created = call(
        served,
        "POST",
        "/v1/segments",
        "marketing",
        {"name": "At risk", "purpose": "marketing", "rule": RULE},
    )
    assert created.status_code == 201, created.text
    sid = created.json()["segment_id"]
    assert created.json()["version"] == 1
    narrower = {"and": [*RULE["and"], {"attr": "churn_risk", "op": ">=", "value": 0.6}]}
    updated = call(served, "PUT", f"/v1/segments/{sid}", "marketing", {"rule": narrower})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    got = call(served, "GET", f"/v1/segments/{sid}", "marketing").json()
    assert [v["version"] for v in got["versions"]] == [1, 2]
    assert got["versions"][0]["rule"] == RULE and got["rule"] == narrower
    listed = call(served, "GET", "/v1/segments", "marketing").json()
    assert sid in {s["segment_id"] for s in listed}
    first = call(
        served, "POST", "/v1/segments/preview", "marketing", {"purpose": "marketing", "rule": RULE}
    ).json()
    now = call(served, "GET", f"/v1/segments/{sid}/preview", "marketing").json()
    assert now["version"] == 2 and now["members"] <= first["members"]
    bad = call(
        served,
        "PUT",
        f"/v1/segments/{sid}",
        "marketing",
        {"rule": {"attr": "churn_risk", "op": "~", "value": 1}},
    )
    assert bad.status_code == 422 and bad.json()["field"] == "rule.op"
    assert call(served, "GET", "/v1/segments/seg_nope", "marketing").status_code == 404


def test_segments_are_for_marketing_keys(served: dict[str, Any]) -> None:
    for key in ("mobile_app", "steward"):
        r = call(
            served, "POST", "/v1/segments/preview", key, {"purpose": "marketing", "rule": RULE}
        )
        assert r.status_code == 403 and "marketing" in r.json()["detail"]


def test_export_reaches_only_consented_members_with_only_allowed_attributes(
    served: dict[str, Any],
) -> None:
    settings = served["settings"]
    sid = create_segment(served, "Export", RULE)
    r = call(served, "GET", f"/v1/segments/{sid}/export?channel=sms_campaigns", "marketing")
    assert r.status_code == 200, r.text
    docs = [json.loads(line) for line in r.text.splitlines()]
    preview = call(served, "GET", f"/v1/segments/{sid}/preview", "marketing").json()
    assert len(docs) == preview["reachable"] == int(r.headers["X-Members"]) > 0

    profiles = served["lake"].read_polars(PROFILES)
    consented = set(
        profiles.filter(pl.col("consent_marketing_granted").fill_null(False))["person_id"]
    )
    allowed = {a for a, ps in settings.policy.attributes.items() if "marketing" in ps}
    for doc in docs:
        assert doc["person_id"] in consented, "exported without marketing consent"
        assert doc["channel"] == "sms_campaigns"
        served_attrs = set(doc["attributes"]) - {"person_id"}  # the key is always returned
        assert served_attrs <= allowed, served_attrs - allowed

    csv_body = call(
        served, "GET", f"/v1/segments/{sid}/export?channel=sms_campaigns&format=csv", "marketing"
    )
    header, *table = list(csv.reader(io.StringIO(csv_body.text)))
    assert header[0] == "person_id" and len(table) == len(docs)
    assert set(header[1:]) == allowed
    # Plain spreadsheet cells, the same values as the JSON lines: lists joined by "; ".
    by_person = {doc["person_id"]: doc["attributes"] for doc in docs}
    listed = 0
    for row in table:
        attrs = by_person[row[0]]
        for name, cell in zip(header[1:], row[1:], strict=True):
            value = attrs.get(name)
            if isinstance(value, list):
                listed += bool(value)
                assert cell == "; ".join(value), (name, cell, value)
            else:
                assert cell == ("" if value is None else str(value)), (name, cell, value)
            assert not cell.startswith(("[", "{")), (name, cell)
    assert listed, "no member with a list attribute (emails): the scenario changed"

    audit = call(served, "GET", f"/v1/audit?person={docs[0]['person_id']}", "steward").json()
    assert any(a["kind"] == "segment_export" and a["channel"] == "sms_campaigns" for a in audit)

    refused = call(served, "GET", f"/v1/segments/{sid}/export?channel=contact_centre", "marketing")
    assert refused.status_code == 403 and "does not hold purpose" in refused.json()["detail"]
