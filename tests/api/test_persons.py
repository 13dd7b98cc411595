"""Right of access over HTTP: the consent steward exports everything held about the person
holding an identifier; a recycled number's earlier owner, and their events on it, stay out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from tests.spark.truth_profiles import load_truth

pytestmark = [pytest.mark.api]


def _digits(value: Any) -> str:
    return "".join(ch for ch in str(value or "") if ch.isdigit())


def test_the_export_holds_the_current_holder_of_a_recycled_number_and_not_its_first_owner(
    served: dict[str, Any], operator: dict[str, Any]
) -> None:
    settings = operator["settings"]
    truth = load_truth(settings.paths.landing_root, settings.paths.truth_root)
    owners: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in sorted(truth.tenures, key=lambda t: t["valid_from"]):
        owners[t["msisdn"]].append(t)
    number, first, second = next(
        (n, held[0], held[-1])
        for n, held in sorted(owners.items())
        if len(held) > 1
        and held[-1]["valid_to"] is None
        and held[0]["person_key"] != held[-1]["person_key"]
    )
    on_number = [e for e in truth.events if _digits(e.get("msisdn")).endswith(number[-9:])]
    theirs = {e["event_id"] for e in on_number if e["_person"] == second["person_key"]}
    earlier = {e["event_id"] for e in on_number if e["_person"] == first["person_key"]}
    assert theirs and earlier

    client, keys = served["client"], served["keys"]
    looked = client.get(f"/v1/profiles/msisdn/{number}", headers={"X-API-Key": keys["mobile_app"]})
    assert looked.status_code == 200
    url = f"/v1/persons/msisdn/{number}/export"
    assert client.get(url, headers={"X-API-Key": keys["mobile_app"]}).status_code == 403
    assert client.get(url, headers={"X-API-Key": keys["steward:billing"]}).status_code == 403
    response = client.get(url, headers={"X-API-Key": keys["steward:consent"]})

    assert response.status_code == 200
    doc = response.json()
    assert doc["person_id"] == looked.json()["person_id"]
    lines = [i for i in doc["identifiers"] if i["id_type"] == "msisdn" and i["id_value"] == number]
    assert [i["tenure"][:19] for i in lines] == [second["valid_from"].isoformat()[:19]]
    exported = {e["event_id"] for events in doc["events"].values() for e in events}
    assert theirs <= exported
    assert not earlier & exported  # the number's first owner is someone else
    consent = [e for e in doc["events"].get("crm", []) if e["event_type"] == "consent"]
    assert doc["consent_history"] == consent
    assert any(r["kind"] == "lookup" and r["channel"] == "mobile_app" for r in doc["lookups"]), doc[
        "lookups"
    ]
    assert doc["profile"]["person_id"] == doc["person_id"]

    page = client.get(
        url, params={"format": "html"}, headers={"X-API-Key": keys["steward:consent"]}
    )
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"Everything held about {doc['person_id']}" in page.text
    missing = client.get(
        "/v1/persons/msisdn/998000000000/export", headers={"X-API-Key": keys["steward:consent"]}
    )
    assert missing.status_code == 404
