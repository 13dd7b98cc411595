"""Audit records are written in batches off the request path, and a clean shutdown writes every
record already accepted: none is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipelines.config import PROJECT_ROOT, load_settings
from pipelines.ops.audit import AuditLog, AuditRecord
from pipelines.profile.consent import compile_rules

pytestmark = pytest.mark.ops
RULES = compile_rules(load_settings(PROJECT_ROOT / "conf", env={}).policy)["sms_campaigns"]


def _rec(i: int, person: str = "P1") -> AuditRecord:
    return AuditRecord(
        kind="lookup",
        key_id="k1",
        channel="sms_campaigns",
        person_id=person,
        disclosure=RULES.disclosure((i % 2 == 0,), ("consent",)),
        profile_version=i,
        snapshot_version=7,
        at=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=i),
    )


def test_close_writes_everything_queued(ops_url: str) -> None:
    url = ops_url
    log = AuditLog(url, batch=50, every_s=5.0)  # slow flushes: close must drain the queue
    for i in range(1234):
        log.record(_rec(i, "P1" if i % 3 else "P2"))
    log.close()
    reopened = AuditLog(url)
    got = reopened.query("P1", None, None) + reopened.query("P2", None, None)
    assert len(got) == 1234
    window = reopened.query(
        "P1",
        datetime(2026, 10, 1, 0, 0, 10, tzinfo=UTC),
        datetime(2026, 10, 1, 0, 0, 20, tzinfo=UTC),
    )
    assert [r["profile_version"] for r in window] == [i for i in range(10, 21) if i % 3]
    consented, refused = window[0], window[1]  # versions 10 (in force) and 11 (not)
    assert consented["purposes"] == {"marketing": True}
    assert consented["legal_basis"] == {"marketing": "consent"}
    assert "primary_msisdn" in consented["served"]
    assert refused["purposes"] == {"marketing": False}
    assert "primary_msisdn" not in refused["served"]
    assert {"attribute": "primary_msisdn", "reason": "no_consent", "purposes": ["marketing"]} in (
        refused["withheld"]
    )
    reopened.close()
