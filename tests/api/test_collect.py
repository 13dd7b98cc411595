"""The collector lands a source's events durably (a visible, complete file before 202) and refuses
what it must: other sources' keys, malformed lines, oversized bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = pytest.mark.api


def _post(served: Any, source: str, body: str, key: str | None, ndjson: bool = False) -> Any:
    headers = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    if key:
        headers["X-API-Key"] = served["keys"][key]
    return served["client"].post(f"/v1/collect/{source}", content=body, headers=headers)


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"app-http-{i}",
        "source": "app",
        "event_type": "open",
        "event_ts": "2026-10-05T10:00:00Z",
        "schema_version": 1,
        "app_user_id": "u0000000001",
        "platform": "ios",
    }


def test_a_batch_lands_as_one_complete_file(served: Any) -> None:
    body = "\n".join(json.dumps(_event(i)) for i in range(3)) + "\n"
    got = _post(served, "app", body, "source:app", ndjson=True)
    assert got.status_code == 202, got.text
    assert got.json()["accepted"] == 3
    landed = served["settings"].paths.landing_root / "app" / got.json()["file"]
    assert [json.loads(ln)["event_id"] for ln in landed.read_text().splitlines()] == [
        "app-http-0",
        "app-http-1",
        "app-http-2",
    ]
    assert not list(landed.parent.glob(".*.tmp"))
    single = _post(served, "app", json.dumps(_event(9)), "source:app")
    assert single.status_code == 202 and single.json()["accepted"] == 1


def test_refusals_name_the_problem(served: Any) -> None:
    assert _post(served, "app", json.dumps(_event(1)), None).status_code == 401
    wrong_key = _post(served, "billing", json.dumps(_event(1)), "source:app")
    assert wrong_key.status_code == 403 and "billing" in wrong_key.json()["detail"]
    assert _post(served, "fax", "{}", "source:app").status_code == 404
    broken = _post(served, "app", '{"event_id": 1}\n{"event_id": ', "source:app", ndjson=True)
    assert broken.status_code == 400 and broken.json()["detail"].startswith("line 2")
    other = dict(_event(1), source="crm")
    assert _post(served, "app", json.dumps(other), "source:app").status_code == 400
    limit = served["settings"].api.max_body_bytes
    huge = _post(served, "app", "x" * (limit + 1), "source:app")
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["detail"]


def test_hostile_bodies_get_a_4xx_that_names_the_problem_never_a_5xx(served: Any) -> None:
    """The probes that answered 500 or reset the connection: bytes that are not UTF-8, 100,000
    nested brackets, deeply nested objects (both content types), NaN; nothing lands."""
    landing = served["settings"].paths.landing_root / "app"
    before = sorted(landing.glob("*.jsonl")) if landing.exists() else []
    nested = ('{"a":' * 5_000 + json.dumps(_event(7)) + "}" * 5_000).encode()
    probes = {
        "not UTF-8": (b'{"a":"\xff"}', False, 400, "not UTF-8"),
        "not UTF-8, NDJSON": (b'{"a":"\xff"}', True, 400, "not UTF-8"),
        "brackets": (b"[" * 100_000 + b"]" * 100_000, False, 400, "api.max_json_depth"),
        "nested objects": (nested, True, 400, "api.max_json_depth"),
        "NaN": (json.dumps(dict(_event(8), amount=float("nan"))).encode(), False, 400, "NaN"),
    }
    for name, (body, ndjson, code, says) in probes.items():
        headers = {
            "Content-Type": "application/x-ndjson" if ndjson else "application/json",
            "X-API-Key": served["keys"]["source:app"],
        }
        got = served["client"].post("/v1/collect/app", content=body, headers=headers)
        assert got.status_code == code and says in got.json()["detail"], (name, got.text)
    after = sorted(landing.glob("*.jsonl")) if landing.exists() else []
    assert after == before
