"""Audit records are written in batches off the request path, and a clean shutdown writes every
record already accepted: none is lost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.audit import AuditLog, AuditRecord

pytestmark = pytest.mark.unit


def _rec(i: int, person: str = "P1") -> AuditRecord:
    return AuditRecord(
        kind="lookup",
        key_id="k1",
        channel="sms_campaigns",
        person_id=person,
        purposes={"marketing": i % 2 == 0},
        legal_basis={"marketing": "consent"},
        served=["person_id"],
        withheld=[{"attribute": "primary_msisdn", "reason": "no_consent"}],
        profile_version=i,
        snapshot_version=7,
        at=datetime(2026, 10, 1, tzinfo=UTC) + timedelta(seconds=i),
    )


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.sqlite'}"
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
    assert window[0]["withheld"] == [{"attribute": "primary_msisdn", "reason": "no_consent"}]
    reopened.close()
