"""`cdp stream` keeps ingesting files as they arrive and stops cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.lake import Lake
from tests.e2e.test_crash_restart import _conf, _env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _line(event_id: str) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "source": "network",
            "event_type": "location",
            "event_ts": "2026-10-02T10:00:00Z",
            "schema_version": 1,
            "msisdn": "998901112233",
            "cell_id": "TAS-0001",
            "region": "Tashkent",
        }
    )


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _silver_ids(lake: Lake) -> set[str]:
    if not lake.exists("silver.network"):
        return set()
    return set(lake.read_arrow("silver.network", ["event_id"]).column("event_id").to_pylist())


def test_stream_picks_up_new_files_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    conf, root = _conf(tmp_path), tmp_path / "data"
    landing = root / "landing" / "network"
    landing.mkdir(parents=True)
    (landing / "n-1.jsonl").write_text(_line("first") + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "stream"],
        env=_env(conf, root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lake = Lake(root / "lake")
    try:
        assert _wait_for(lambda: "first" in _silver_ids(lake), 120)
        tmp = landing / ".n-2.jsonl.tmp"
        tmp.write_text(_line("second") + "\n")
        tmp.rename(landing / "n-2.jsonl")
        assert _wait_for(lambda: "second" in _silver_ids(lake), 60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped; every committed micro-batch is kept" in out
    assert "Traceback" not in out
    assert _silver_ids(lake) == {"first", "second"}
