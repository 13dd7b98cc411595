"""Profile lookups over HTTP: any identifier finds its person, each channel sees only what its
purposes and the customer's consent allow, a consent withdrawal shows from the next snapshot, and
bad requests get 401/403/404/422/308 with a message that says what to do."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from pipelines.lakehouse.catalog import MERGES, PROFILES
from pipelines.lakehouse.lake import Lake
from tests.api.conftest import new_version

pytestmark = pytest.mark.api


def _rows(lake: Lake) -> list[dict[str, Any]]:
    return lake.read_arrow(PROFILES).to_pylist()


def _get(served: Any, path: str, key: str | None) -> Any:
    headers = {"X-API-Key": served["keys"][key]} if key else {}
    return served["client"].get(path, headers=headers)


def test_any_spelling_of_a_number_finds_its_person(served: Any) -> None:
    row = next(r for r in _rows(served["lake"]) if r["primary_msisdn"])
    for spelling in (
        row["primary_msisdn"],
        "+" + row["primary_msisdn"],
        "0" + row["primary_msisdn"][3:],
    ):
        got = _get(served, f"/v1/profiles/msisdn/{spelling}", "contact_centre")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["person_id"] == row["person_id"]
        assert body["snapshot_version"] == served["lake"].version(PROFILES)
        assert body["profile_version"] == row["profile_version"]


def test_each_channel_sees_only_consented_purposes(served: Any) -> None:
    policy = served["settings"].policy
    rows = [r for r in _rows(served["lake"]) if r["primary_msisdn"]][:40]
    # Every body is what the OpenAPI document says, down to each attribute's type.
    document = served["client"].get("/openapi.json").json()
    profile_schema = {"$ref": "#/components/schemas/ProfilePublic", **document}
    validator = Draft202012Validator(profile_schema, format_checker=FormatChecker())
    for channel, spec in policy.channels.items():
        for row in rows:
            body = _get(served, f"/v1/profiles/person_id/{row['person_id']}", channel).json()
            errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(body)]
            assert not errors, (channel, errors[:5])
            for attribute in body["attributes"]:
                if attribute == "person_id":
                    continue
                allowed = [p for p in policy.attributes[attribute] if p in spec.purposes]
                assert any(row[f"consent_{p}_granted"] for p in allowed), (channel, attribute)
            withheld = {w["attribute"] for w in body["withheld"]}
            assert withheld.isdisjoint(body["attributes"])
            assert withheld | set(body["attributes"]) == {"person_id", *policy.attributes}
            assert all("value" not in w for w in body["withheld"])


def test_withdrawal_is_enforced_from_the_next_snapshot(served: Any) -> None:
    lake = served["lake"]
    row = next(r for r in _rows(lake) if r["consent_marketing_granted"] and r["primary_msisdn"])
    path = f"/v1/profiles/person_id/{row['person_id']}"
    before = _get(served, path, "sms_campaigns").json()
    assert "primary_msisdn" in before["attributes"]
    row.update(consent_marketing_granted=False, profile_version=row["profile_version"] + 1)
    new_version(lake, row)
    deadline = time.monotonic() + 30
    after = before
    while after["snapshot_version"] == before["snapshot_version"] and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _get(served, path, "sms_campaigns").json()
    assert after["snapshot_version"] > before["snapshot_version"]
    assert "primary_msisdn" not in after["attributes"]
    assert {
        "attribute": "primary_msisdn",
        "reason": "no_consent",
        "purposes": ["marketing"],
    } in after["withheld"]


def test_errors_say_what_is_wrong(served: Any) -> None:
    assert _get(served, "/v1/profiles/msisdn/998901234567", None).status_code == 401
    bad_key = served["client"].get(
        "/v1/profiles/msisdn/998901234567", headers={"X-API-Key": "cdp_x_y"}
    )
    assert bad_key.status_code == 401 and "cdp keys create" in bad_key.json()["detail"]
    steward = _get(served, "/v1/profiles/msisdn/998901234567", "steward")
    assert steward.status_code == 403 and "channel key" in steward.json()["detail"]
    assert _get(served, "/v1/profiles/msisdn/998901234567", "mobile_app").status_code in (200, 404)
    missing = _get(served, "/v1/profiles/email/nobody@nowhere.uz", "mobile_app")
    assert missing.status_code == 404 and "no person holds" in missing.json()["detail"]
    malformed = _get(served, "/v1/profiles/msisdn/12ab", "mobile_app")
    assert malformed.status_code == 422 and "id_value" in malformed.json()["detail"]
    unknown_type = _get(served, "/v1/profiles/shoe_size/42", "mobile_app")
    assert unknown_type.status_code == 422 and "id_type" in unknown_type.text
    # a person id is P and 20 hex digits: the right length is not enough
    not_hex = _get(served, "/v1/profiles/person_id/P" + "z" * 20, "mobile_app")
    assert not_hex.status_code == 422 and "20 hex digits" in not_hex.json()["detail"]
    audit = _get(served, "/v1/audit?person=P" + "z" * 20, "steward")
    assert audit.status_code == 422 and "person" in audit.text


def test_a_merged_away_person_id_names_the_survivor(served: Any) -> None:
    lake = served["lake"]
    merges = lake.read_polars(MERGES).filter(pl.col("change") == "merge")
    live = {r["person_id"] for r in _rows(lake)}
    absorbed = merges.filter(
        ~pl.col("from_person_id").is_in(list(live)) & pl.col("to_person_id").is_in(list(live))
    )
    assert absorbed.height, "the streamed operator merged persons"
    old, new = (
        absorbed.row(0, named=True)["from_person_id"],
        absorbed.row(0, named=True)["to_person_id"],
    )
    got = served["client"].get(
        f"/v1/profiles/person_id/{old}",
        headers={"X-API-Key": served["keys"]["mobile_app"]},
        follow_redirects=False,
    )
    assert got.status_code == 308
    assert got.json()["merged_into"] == new
    assert got.headers["location"] == f"/v1/profiles/person_id/{new}"


def test_health_needs_no_key(served: Any, tmp_path: Path) -> None:
    assert served["client"].get("/healthz").json() == {"status": "ok"}
    assert served["client"].get("/readyz").json()["ready"] is True


def test_as_of_returns_the_profile_as_it_was_and_the_audit_says_who_saw_it(served: Any) -> None:
    lake = served["lake"]
    dt = lake.table(PROFILES)
    history = sorted(dt.history(), key=lambda h: h["version"])
    # the first version holding any profile, and one of its rows
    first, row = next(
        (h, rows[0])
        for h in history
        if (rows := lake.read_arrow(PROFILES, version=h["version"]).to_pylist())
    )
    at = datetime.fromtimestamp(first["timestamp"] / 1000 + 0.001, UTC)
    path = f"/v1/profiles/person_id/{row['person_id']}/as-of"
    key = {"X-API-Key": served["keys"]["contact_centre"]}
    got = served["client"].get(
        path, params={"ts": at.isoformat(), "by": "commit_time"}, headers=key
    )
    assert got.status_code == 200, got.text
    assert got.json()["profile_version"] == row["profile_version"]
    assert got.json()["snapshot_version"] == first["version"]
    # by event time (the default), long before the data: no profile stood then
    ancient = served["client"].get(path, params={"ts": "2000-01-01T00:00:00Z"}, headers=key)
    assert ancient.status_code == 404 and "no profile held" in ancient.json()["detail"]
    naive = served["client"].get(
        path,
        params={"ts": "2026-10-05T12:00:00"},
        headers={"X-API-Key": served["keys"]["contact_centre"]},
    )
    assert naive.status_code == 422 and "time zone" in naive.json()["detail"]
    audit = _get(served, f"/v1/audit?person={row['person_id']}", "steward")
    assert audit.status_code == 200, audit.text
    kinds = [(r["kind"], r["channel"]) for r in audit.json()]
    assert ("lookup_as_of", "contact_centre") in kinds
    record = next(r for r in audit.json() if r["kind"] == "lookup_as_of")
    assert "person_id" in record["served"] and record["purposes"].keys() == {"service", "profiling"}
    assert _get(served, f"/v1/audit?person={row['person_id']}", "mobile_app").status_code == 403


def test_as_of_serves_nothing_of_a_purpose_whose_consent_was_withdrawn_since(served: Any) -> None:
    """An old version held profiling consent; it is withdrawn now: the channel no longer gets
    the profiling values of then either (a withdrawal ends their use, not just new ones)."""
    lake = served["lake"]
    current = lake.read_polars(PROFILES)
    row = current.filter(
        pl.col("consent_profiling_granted").fill_null(False) & pl.col("churn_risk").is_not_null()
    ).to_dicts()[0]
    before = datetime.now(UTC)
    time.sleep(0.01)
    path = f"/v1/profiles/person_id/{row['person_id']}/as-of"
    path = f"{path}?by=commit_time&ts="  # what the CDP held before the withdrawal
    then = _get(served, f"{path}{quote(before.isoformat())}", "contact_centre")
    assert then.status_code == 200 and "churn_risk" in then.json()["attributes"], then.text
    withdrawn = {
        **row,
        "consent_profiling_granted": False,
        "profile_version": row["profile_version"] + 1,
    }
    new_version(lake, withdrawn)
    version = lake.version(PROFILES)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = served["client"].get("/readyz").json()
        if health.get("snapshot_version") == version:
            break
        time.sleep(0.1)
    later = _get(served, f"{path}{quote(before.isoformat())}", "contact_centre")
    assert later.status_code == 200, later.text
    assert later.json()["profile_version"] == row["profile_version"]  # the old version
    assert "churn_risk" not in later.json()["attributes"]
    assert any(w["attribute"] == "churn_risk" for w in later.json()["withheld"])
    assert "open_cases" in later.json()["attributes"]  # service: contract still holds


def test_metrics_count_requests_per_route_and_show_the_snapshot(served: Any) -> None:
    row = next(r for r in _rows(served["lake"]) if r["primary_msisdn"])
    _get(served, f"/v1/profiles/person_id/{row['person_id']}", "mobile_app")
    text = served["client"].get("/metrics").text
    assert 'cdp_http_requests_total{route="/v1/profiles/{id_type}/{id_value}",status="200"}' in text
    assert "cdp_http_request_seconds_bucket" in text
    assert "cdp_snapshot_version" in text and "cdp_snapshot_age_seconds" in text


def test_the_audit_by_a_number_finds_its_holders_lookups_while_they_held_it(served: Any) -> None:
    """A steward asks about a recycled number: the lookups of its current holder are there (made
    by person id, not by the number), those of its earlier owner made today (after their tenure
    ended) are not."""
    from pipelines.lakehouse.catalog import MAP

    tenures = (
        served["lake"]
        .read_polars(MAP, ["id_type", "id_value", "person_id", "tenure", "valid_to"])
        .filter(pl.col("id_type") == "msisdn")
    )
    recycled = (
        tenures.group_by("id_value")
        .agg(pl.col("person_id").n_unique().alias("owners"), pl.col("valid_to").is_null().any())
        .filter((pl.col("owners") == 2) & pl.col("valid_to"))
        .sort("id_value")
        .get_column("id_value")[0]
    )
    owners = tenures.filter(pl.col("id_value") == recycled)
    current = owners.filter(pl.col("valid_to").is_null()).get_column("person_id")[0]
    earlier = owners.filter(pl.col("valid_to").is_not_null()).get_column("person_id")[0]
    assert current != earlier
    for person in (current, earlier):
        got = _get(served, f"/v1/profiles/person_id/{person}", "contact_centre")
        assert got.status_code == 200, got.text
    audit = _get(served, f"/v1/audit/by/msisdn/%2B{recycled}", "steward")
    assert audit.status_code == 200, audit.text
    persons = {r["person_id"] for r in audit.json()}
    assert current in persons and earlier not in persons
    by_person = _get(served, f"/v1/audit?person={earlier}", "steward").json()
    assert any(r["channel"] == "contact_centre" for r in by_person)  # it was looked up
    malformed = _get(served, "/v1/audit/by/msisdn/12ab", "steward")
    assert malformed.status_code == 422 and "id_value" in malformed.text
    assert _get(served, f"/v1/audit/by/msisdn/{recycled}", "mobile_app").status_code == 403


def test_each_request_is_logged_as_json_with_its_request_id_and_no_identifier(served: Any) -> None:
    row = next(r for r in _rows(served["lake"]) if r["primary_msisdn"])
    number = row["primary_msisdn"]
    key = {"X-API-Key": served["keys"]["contact_centre"]}
    got = served["client"].get(
        f"/v1/profiles/msisdn/{number}", headers={**key, "X-Request-ID": "req-abc.123"}
    )
    assert got.status_code == 200 and got.headers["x-request-id"] == "req-abc.123"
    # a caller's id that is not a plain token is replaced by one of ours
    odd = served["client"].get("/healthz", headers={"X-Request-ID": "a b\\c"})
    assert len(odd.headers["x-request-id"]) == 32 and odd.headers["x-request-id"] != "a b\\c"

    log: Path = served["server"].log_path
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while not mine and time.monotonic() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        mine = [x for x in lines if x["request_id"] == "req-abc.123"]
        time.sleep(0.1)
    assert len(mine) == 1
    line = mine[0]
    assert {k: line[k] for k in ("method", "route", "status")} == {
        "method": "GET",
        "route": "/v1/profiles/{id_type}/{id_value}",
        "status": 200,
    }
    assert line["ms"] >= 0 and datetime.fromisoformat(line["ts"]).tzinfo is not None
    assert number not in log.read_text()  # routes, never paths: no identifier in the log
