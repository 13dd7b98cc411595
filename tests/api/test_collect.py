"""The collector lands a source's events durably (a visible, complete file before 202) and refuses
what it must: other sources' keys, malformed lines, oversized bodies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.server import ServeProcess
from pipelines.ops.keys import KeyStore
from tests.conftest import settings_for

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


def test_a_kill_9_with_20_posts_in_flight_loses_no_acknowledged_event(
    served: Any, tmp_path: Path
) -> None:
    """Twenty sources post 2,000 events each at once and the server is killed with SIGKILL as
    the first 202 arrives: every acknowledged batch is in landing whole, and every visible
    landing file is complete (no partial line, no partial batch)."""
    root = tmp_path / "root"
    shutil.copytree(served["root"] / "lake", root / "lake")
    key = KeyStore(settings_for(root).database_url).create("kill feed", "source", "app")
    server = ServeProcess(root, {"CDP_EVENTS_DELIVER": "false"})
    bodies = [
        "".join(json.dumps(dict(_event(0), event_id=f"kill-{i}-{j}")) + "\n" for j in range(2000))
        for i in range(20)
    ]
    answers: dict[int, int | None] = {}
    first = threading.Event()

    def post(i: int) -> None:
        try:
            r = httpx.post(
                f"{server.url}/v1/collect/app",
                content=bodies[i],
                headers={"X-API-Key": key, "Content-Type": "application/x-ndjson"},
                timeout=60,
            )
            answers[i] = r.status_code
            if r.status_code == 202:
                first.set()
        except httpx.HTTPError:
            answers[i] = None  # cut off by the kill: not acknowledged

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    try:
        assert first.wait(60), answers
    finally:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
    for t in threads:
        t.join(timeout=60)
    acknowledged = {i for i, code in answers.items() if code == 202}
    assert acknowledged and all(code in (202, None) for code in answers.values()), answers
    landed: dict[int, int] = {}
    for f in sorted((root / "landing" / "app").glob("*.jsonl")):  # hidden .tmp files excluded
        ids = [json.loads(line)["event_id"] for line in f.read_text().splitlines()]
        batches = {int(i.split("-")[1]) for i in ids}
        assert len(batches) == 1 and len(ids) == 2000, f"{f.name} is not one whole batch"
        landed[batches.pop()] = len(ids)
    assert acknowledged <= set(landed), (acknowledged, sorted(landed))
