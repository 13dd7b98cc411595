"""A `cdp run` killed with SIGKILL mid-way and restarted ends with exactly the rows of an
uninterrupted run, from bronze to the gold profiles: nothing lost, nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipelines.config import PROJECT_ROOT
from pipelines.lake import Lake
from tests.conftest import settings_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CDP = [sys.executable, "-m", "pipelines.cli"]


def _conf(tmp: Path) -> Path:
    """Project config with one file per micro-batch, so a run has many commits to die between."""
    conf = tmp / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    engine = yaml.safe_load((conf / "engine.yaml").read_text())
    engine["engine"]["max_files_per_trigger"] = 1
    engine["engine"]["spark_master"] = "local[2]"
    engine["engine"]["driver_memory"] = "1g"
    (conf / "engine.yaml").write_text(yaml.safe_dump(engine))
    return conf


def _env(conf: Path, root: Path) -> dict[str, str]:
    return {**os.environ, "CDP_CONF_DIR": str(conf), "CDP_DATA_ROOT": str(root)}


def _snapshot(root: Path) -> dict[str, Counter]:
    lake = Lake(root / "lake")
    out: dict[str, Counter] = {}
    for table in ("bronze.billing", "bronze.network", "bronze.app", "bronze.crm"):
        out[table] = Counter(lake.read_arrow(table, ["raw_line"]).column("raw_line").to_pylist())
    for table in ("silver.billing", "silver.network", "silver.app", "silver.crm"):
        out[table] = Counter(lake.read_arrow(table, ["event_id"]).column("event_id").to_pylist())
    q = lake.read_arrow("silver.quarantine", ["raw_line", "reason_code"]).to_pylist()
    out["quarantine"] = Counter((r["raw_line"], r["reason_code"]) for r in q)
    # Gold: the same profiles (their version counts differ with the batching, so bookkeeping is
    # left out) and the same daily counters.
    profiles = lake.read_arrow("gold.profiles").to_pylist()
    out["profiles"] = Counter(
        repr(sorted((k, v) for k, v in r.items() if k not in ("profile_version", "updated_at")))
        for r in profiles
    )
    usage: Counter = Counter()
    for r in lake.read_arrow("silver.daily_usage").to_pylist():
        usage[(r["id_type"], r["id_value"], r["day"])] += r["data_bytes"]
    out["daily_usage"] = usage
    return out


def test_sigkill_mid_run_then_restart_equals_clean_run(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    subprocess.run(
        [*CDP, "generate", "--subscribers", "150", "--days", "4", "--files-per-source", "5"],
        env=_env(conf, clean),
        check=True,
        capture_output=True,
    )
    shutil.copytree(clean / "landing", crashed / "landing")

    proc = subprocess.Popen(
        [*CDP, "run"], env=_env(conf, crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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

    subprocess.run([*CDP, "run"], env=_env(conf, crashed), check=True, capture_output=True)
    subprocess.run([*CDP, "run"], env=_env(conf, clean), check=True, capture_output=True)
    assert _snapshot(crashed) == _snapshot(clean)
    ids = Lake(crashed / "lake").read_arrow("ops.outbox", ["event_id"]).column("event_id")
    assert len(ids) == len(set(ids.to_pylist())), "an outbox event was recorded twice"
