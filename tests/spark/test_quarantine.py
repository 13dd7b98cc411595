"""Every kind of contract breach lands in quarantine with a reason a steward understands,
while the valid lines of the same file still land typed in silver."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pipelines.config import Settings
from tests.spark.helpers import event, ingest, land, rows

pytestmark = pytest.mark.spark

PAYMENT = {
    "msisdn": "+998 90 123-45-67",
    "account_id": "AC1",
    "amount": "15000.50",
    "currency": "UZS",
    "balance_after": 20000,
    "payment_channel": "card",
}


@pytest.fixture
def billing_file(settings: Settings) -> Settings:
    bad_type = event("billing", "payment", "e-type", **{**PAYMENT, "amount": "abc"})
    missing = event("billing", "payment", "e-missing", **PAYMENT)
    del missing["msisdn"]
    future = event("billing", "payment", "e-future", **PAYMENT)
    future["event_ts"] = "2099-01-01T00:00:00Z"
    # Within the allowed skew (60 min) of ingest time: valid.
    soon = event("billing", "payment", "e-soon", **PAYMENT)
    soon["event_ts"] = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    no_offset = event("billing", "payment", "e-local", **PAYMENT)
    no_offset["event_ts"] = "2026-10-02T10:00:00"
    yesterday = event("billing", "payment", "e-word", **PAYMENT)
    yesterday["event_ts"] = "yesterday"
    lines = [
        event("billing", "payment", "e-ok-1", **PAYMENT),
        '{"event_id": "e-broken", "source": "billing", "event_type": "paym',
        bad_type,
        missing,
        event("billing", "teleport", "e-type-unknown", **PAYMENT),
        {**event("billing", "payment", "e-version", **PAYMENT), "schema_version": 99},
        future,
        soon,
        no_offset,
        yesterday,
        event("billing", "payment", "e-junk", **{**PAYMENT, "msisdn": "000000000"}),
        event("billing", "payment", "e-ok-1", **PAYMENT),  # same id again
        {**event("billing", "payment", "e-drift", **PAYMENT), "loyalty_tier": "gold"},
        {**event("billing", "payment", "e-wrong-source", **PAYMENT), "source": "crm"},
        event("billing", "payment", "e-enum", **{**PAYMENT, "currency": "EUR"}),
        "[1, 2, 3]",
        "",
        # a valid event padded past engine.max_line_bytes (1 MiB): refused unread
        {**event("billing", "payment", "e-huge", **PAYMENT), "note": "x" * 1_100_000},
    ]
    land(settings, "billing", "billing-00001.jsonl", lines)
    return settings


def test_each_breach_is_quarantined_with_its_reason(spark, billing_file: Settings) -> None:
    ingest(spark, billing_file, ["billing"])
    quarantined = {r["event_id"]: r for r in rows(billing_file, "silver.quarantine")}
    by_reason = {(r["event_id"], r["reason_code"]): r["reason"] for r in quarantined.values()}
    assert by_reason[("e-type", "wrong_type")] == 'amount: expected decimal, got "abc"'
    assert by_reason[("e-missing", "missing_field")] == "missing field msisdn"
    assert by_reason[("e-type-unknown", "unknown_event_type")].startswith(
        'event_type "teleport" is not in the billing contract v1'
    )
    assert by_reason[("e-version", "unknown_schema_version")].startswith('schema_version "99"')
    assert by_reason[("e-future", "future_event_time")] == (
        'event_ts "2099-01-01T00:00:00Z" is more than 60 min after ingest time'
    )
    assert by_reason[("e-local", "wrong_type")].startswith("event_ts: expected ISO-8601")
    assert by_reason[("e-word", "wrong_type")] == (
        'event_ts: expected ISO-8601 timestamp with offset, got "yesterday"'
    )
    assert by_reason[("e-junk", "junk_identifier")] == 'msisdn: junk identifier "000000000"'
    assert by_reason[("e-ok-1", "duplicate")].startswith('duplicate event_id "e-ok-1"')
    assert ("e-wrong-source", "wrong_source") in by_reason
    assert by_reason[("e-enum", "wrong_type")].startswith("currency: expected one of UZS, USD")
    assert re.fullmatch(
        r"line of 11\d{5} bytes; at most 1048576 are read \(engine\.max_line_bytes\)",
        by_reason[("e-huge", "oversized")],
    )
    broken = [r for r in quarantined.values() if r["reason_code"] == "bad_json"]
    all_rows = rows(billing_file, "silver.quarantine")
    assert sum(r["reason_code"] == "bad_json" for r in all_rows) == 3  # broken, array, empty
    assert broken and all(r["raw_line"] is not None for r in all_rows)
    assert all(r["source"] == "billing" and r["contract_version"] == 1 for r in all_rows)


def test_valid_lines_of_the_same_file_land_typed(spark, billing_file: Settings) -> None:
    ingest(spark, billing_file, ["billing"])
    silver = {r["event_id"]: r for r in rows(billing_file, "silver.billing")}
    assert set(silver) == {"e-ok-1", "e-drift", "e-soon"}
    ok = silver["e-ok-1"]
    assert ok["msisdn"] == "998901234567"  # normalised to E.164 digits
    assert ok["amount"] == Decimal("15000.50") and ok["balance_after"] == Decimal("20000.00")
    assert ok["event_ts"].isoformat() == "2026-10-02T05:00:00+00:00"  # +05:00 -> UTC
    assert ok["iccid"] is None  # not a payment field
    assert silver["e-drift"]["_unknown_fields"] == ["loyalty_tier"]
    bronze = rows(billing_file, "bronze.billing")
    assert len(bronze) == 18  # every line kept raw, broken ones included


def test_unknown_fields_are_counted_as_drift_per_field(spark, billing_file: Settings) -> None:
    ingest(spark, billing_file, ["billing"])
    drift = rows(billing_file, "silver.schema_drift")
    assert [(d["source"], d["field"], d["events"], d["example_event_id"]) for d in drift] == [
        ("billing", "loyalty_tier", 1, "e-drift")
    ]


def test_every_line_is_accounted_for(spark, billing_file: Settings) -> None:
    ingest(spark, billing_file, ["billing"])
    bronze = len(rows(billing_file, "bronze.billing"))
    assert bronze == len(rows(billing_file, "silver.billing")) + len(
        rows(billing_file, "silver.quarantine")
    )


def test_a_bad_optional_identifier_is_rejected_alone_and_the_line_still_counts(
    spark, settings: Settings
) -> None:
    """A login with a junk (or malformed) email keeps its app user and line in silver, the email
    dropped and recorded with its reason; a junk value in a required identifier still
    quarantines the line, which cannot be attributed without it."""
    login = {"app_user_id": "u-1", "msisdn": "998901234567", "platform": "android"}
    land(
        settings,
        "app",
        "app-00001.jsonl",
        [
            event("app", "login", "a-junk", **{**login, "email": "a@a.a"}),
            event("app", "login", "a-pattern", **{**login, "email": "Test@example.com"}),
            event("app", "login", "a-malformed", **{**login, "email": "ali@"}),
            event("app", "login", "a-good", **{**login, "email": "Ali@Mail.uz"}),
            event("app", "login", "a-line", **{**login, "msisdn": "000000000"}),
        ],
    )
    ingest(spark, settings, ["app"])
    silver = {r["event_id"]: r for r in rows(settings, "silver.app")}
    assert set(silver) == {"a-junk", "a-pattern", "a-malformed", "a-good"}
    for eid in ("a-junk", "a-pattern", "a-malformed"):
        assert silver[eid]["email"] is None
        assert (silver[eid]["app_user_id"], silver[eid]["msisdn"]) == ("u-1", "998901234567")
    assert silver["a-good"]["email"] == "ali@mail.uz"
    rejected = {r["event_id"]: r for r in rows(settings, "silver.rejected_fields")}
    assert set(rejected) == {"a-junk", "a-pattern", "a-malformed"}
    assert (rejected["a-junk"]["field"], rejected["a-junk"]["reason_code"]) == (
        "email",
        "junk_identifier",
    )
    assert rejected["a-junk"]["reason"] == 'email: junk identifier "a@a.a"'
    assert rejected["a-malformed"]["reason"] == 'email: expected e-mail address, got "ali@"'
    quarantined = {r["event_id"]: r["reason_code"] for r in rows(settings, "silver.quarantine")}
    assert quarantined == {"a-line": "junk_identifier"}
