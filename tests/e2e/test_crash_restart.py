"""A `cdp run` killed with SIGKILL mid-way and restarted ends with exactly the rows of an
uninterrupted run, from bronze to the gold profiles: nothing lost, nothing twice."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipelines.lakehouse.lake import Lake
from tests.conftest import settings_for
from tests.e2e.runs import CDP, ONE_FILE_PER_BATCH, cdp_env, conf_with, landed_twice, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigkill_mid_run_then_restart_equals_clean_run(tmp_path: Path) -> None:
    conf = conf_with(tmp_path, **ONE_FILE_PER_BATCH)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    landed_twice(conf, clean, crashed, files_per_source=5)

    proc = subprocess.Popen(
        [*CDP, "run"],
        env=cdp_env(conf, crashed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = crashed / "lake" / "bronze" / "network" / "_delta_log"
    deadline = time.monotonic() + 240
    while not (log / "00000000000000000000.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed mid-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    settings = settings_for(crashed)
    lake = Lake(settings.paths.lake_root)
    assert lake.version("bronze.network") is not None
    assert lake.version("bronze.network") < 2, "killed before every network file was ingested"

    subprocess.run([*CDP, "run"], env=cdp_env(conf, crashed), check=True, capture_output=True)
    subprocess.run([*CDP, "run"], env=cdp_env(conf, clean), check=True, capture_output=True)
    assert snapshot(crashed) == snapshot(clean)
    ids = Lake(crashed / "lake").read_arrow("ops.outbox", ["event_id"]).column("event_id")
    assert len(ids) == len(set(ids.to_pylist())), "an outbox event was recorded twice"
