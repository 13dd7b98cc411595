"""`cdp stream` keeps ingesting files as they arrive and stops cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.server import HOST, free_port
from pipelines.lakehouse.lake import Lake
from tests.e2e.runs import ONE_FILE_PER_BATCH, cdp_env, conf_with

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


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples a Prometheus endpoint serves, by name and sorted labels ({} if it is down)."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _stream(conf: Path, root: Path, **env: str) -> subprocess.Popen[str]:
    """`cdp stream` in a subprocess, its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli.main", "stream"],
        env={**cdp_env(conf, root), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_stream_picks_up_new_files_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """... and says what it did on its metrics port: batches, rows per table, quarantine by
    reason, promotion steps."""
    conf, root = conf_with(tmp_path, **ONE_FILE_PER_BATCH), tmp_path / "data"
    landing = root / "landing" / "network"
    landing.mkdir(parents=True)
    (landing / "n-1.jsonl").write_text(_line("first") + "\n")
    port = free_port()
    proc = _stream(conf, root, CDP_STREAM_METRICS_PORT=str(port))
    lake = Lake(root / "lake")
    try:
        assert _wait_for(lambda: "first" in _silver_ids(lake), 120)
        tmp = landing / ".n-2.jsonl.tmp"
        tmp.write_text(_line("second") + "\n" + "{not json\n")
        tmp.rename(landing / "n-2.jsonl")
        assert _wait_for(lambda: "second" in _silver_ids(lake), 60)
        url = f"http://{HOST}:{port}/metrics"
        net = (("source", "network"),)
        assert _wait_for(lambda: _metrics(url).get(("cdp_stream_batches_total", net)) == 2, 60)
        assert _wait_for(lambda: _metrics(url).get(("cdp_promotion_steps_total", ())), 120)
        m = _metrics(url)
        assert m[("cdp_stream_rows_total", (*net, ("table", "bronze")))] == 3
        assert m[("cdp_stream_rows_total", (*net, ("table", "silver")))] == 2
        assert m[("cdp_stream_rows_total", (*net, ("table", "quarantine")))] == 1
        assert m[("cdp_stream_quarantined_total", (("reason", "bad_json"), *net))] == 1
        assert m[("cdp_promotion_step_seconds_count", (("part", "gold"),))] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped; every committed micro-batch is kept" in out
    assert "Traceback" not in out
    assert _silver_ids(lake) == {"first", "second"}


def _event(source: str, event_type: str, event_id: str, **payload: object) -> str:
    return json.dumps(
        {
            "event_id": event_id,
            "source": source,
            "event_type": event_type,
            "event_ts": "2026-10-02T10:00:00Z",
            "schema_version": 1,
            **payload,
        }
    )


def _drop(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(folder / name)


def test_a_release_reaches_gold_while_the_stream_runs_without_a_new_batch(tmp_path: Path) -> None:
    """A held source's rows reach gold as soon as the steward releases them: the running stream
    notices the release; nobody has to send another file."""
    from pipelines.config import load_settings
    from pipelines.ops.status import gate_state
    from pipelines.profile.state import silver_ranges

    conf, root = conf_with(tmp_path, **ONE_FILE_PER_BATCH), tmp_path / "data"
    settings = load_settings(conf, env={"CDP_DATA_ROOT": str(root)})
    msisdn = "998901112233"
    _drop(
        root / "landing" / "billing",
        "b-1.jsonl",
        [
            _event(
                "billing",
                "activation",
                "b-act",
                msisdn=msisdn,
                iccid="8999801000000000019",
                account_id="AC1",
                account_type="individual",
                line_role="holder",
                tariff_id="T-MINI",
            )
        ],
    )
    _drop(root / "landing" / "network", "n-1.jsonl", [_line("first")])
    proc = _stream(conf, root)
    lake = Lake(root / "lake")

    def network() -> tuple[int | None, int] | None:
        return (
            silver_ranges(lake, settings).get("network") if lake.exists("gold.profiles") else None
        )

    try:
        assert _wait_for(lambda: (r := network()) is not None and r[0] == r[1], 180)
        broken = [
            _event(
                "network",
                "data_session_end",
                f"n-bad-{i}",
                msisdn=msisdn,
                session_id=f"s{i}",
                bytes_up=10,
                bytes_down=-5,  # byte counters never go below zero: a blocking expectation
                duration_s=60,
            )
            for i in range(10)
        ]
        _drop(root / "landing" / "network", "n-2.jsonl", broken)
        assert _wait_for(lambda: gate_state(settings).get("network", {}).get("held"), 120)
        held = network()
        assert held is not None and held[0] is not None and held[0] < held[1]
        released = subprocess.run(
            [sys.executable, "-m", "pipelines.cli.main", "quality", "release", "silver.network"],
            env=cdp_env(conf, root),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert released.returncode == 0, released.stdout + released.stderr
        assert "the running pipeline promotes them" in released.stdout
        assert _wait_for(lambda: (r := network()) is not None and r[0] == r[1], 60)
        assert not gate_state(settings)["network"]["held"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "quality gate HELD network" in out


def test_run_and_rebuilds_beside_a_running_stream_stop_clearly_and_touch_nothing(
    tmp_path: Path,
) -> None:
    """While `cdp stream` holds identity and gold, `cdp run`, `cdp identity rebuild` and
    `cdp profiles rebuild` each stop with the holder named (exit 3, no traceback), taking the
    lock before they start Spark or load anything, and the stream goes on ingesting."""
    conf, root = conf_with(tmp_path, **ONE_FILE_PER_BATCH), tmp_path / "data"
    landing = root / "landing" / "network"
    _drop(landing, "n-1.jsonl", [_line("first")])
    proc = _stream(conf, root)
    lake = Lake(root / "lake")
    try:
        assert _wait_for(lambda: "first" in _silver_ids(lake), 120)
        for command in (["run"], ["identity", "rebuild"], ["profiles", "rebuild"]):
            other = subprocess.run(
                [sys.executable, "-m", "pipelines.cli.main", *command],
                env=cdp_env(conf, root),
                capture_output=True,
                text=True,
                timeout=300,
            )
            said = other.stdout + other.stderr
            assert other.returncode == 3, (command, said)
            assert "busy" in said and f"pid {proc.pid}" in said.replace("\n", " "), said
            assert "Traceback" not in said
        _drop(landing, "n-2.jsonl", [_line("second")])
        assert _wait_for(lambda: "second" in _silver_ids(lake), 60)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
