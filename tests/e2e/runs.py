"""What the end-to-end tests share: a project config to run `cdp` with, and the content of a
lake's tables to compare two runs by."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pipelines.config import PROJECT_ROOT
from pipelines.lakehouse.lake import Lake

CDP = [sys.executable, "-m", "pipelines.cli.main"]
# One landing file per micro-batch on two local cores: a run has many commits to stop between.
# 2 GB: a gold refresh's plans alone take a few hundred MB of driver heap (docs/benchmarks.md,
# "Driver memory over a run"); memory targets live in bench/scale.py, not here.
ONE_FILE_PER_BATCH: dict[str, Any] = {
    "max_files_per_trigger": 1,
    "spark_master": "local[2]",
    "driver_memory": "2g",
}


def conf_with(tmp: Path, **engine: Any) -> Path:
    """The project's config under `tmp` with these engine settings changed."""
    conf = tmp / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    raw = yaml.safe_load((conf / "engine.yaml").read_text())
    raw["engine"].update(engine)
    (conf / "engine.yaml").write_text(yaml.safe_dump(raw))
    return conf


def cdp_env(conf: Path, root: Path) -> dict[str, str]:
    """The environment of a `cdp` command on config `conf` and data under `root`."""
    return {**os.environ, "CDP_CONF_DIR": str(conf), "CDP_DATA_ROOT": str(root)}


def landed_twice(conf: Path, first: Path, second: Path, files_per_source: int) -> None:
    """A 150-subscriber, 4-day operator generated under `first` and its landing files copied
    under `second`: two runs to compare start from the same input."""
    subprocess.run(
        [
            *CDP,
            "generate",
            "--subscribers",
            "150",
            "--days",
            "4",
            "--files-per-source",
            str(files_per_source),
        ],
        env=cdp_env(conf, first),
        check=True,
        capture_output=True,
    )
    shutil.copytree(first / "landing", second / "landing")


def snapshot(root: Path) -> dict[str, Counter]:
    """Every row that matters of a run's lake, as counters: bronze lines, silver ids, quarantine,
    the gold profiles without their bookkeeping, and the daily usage counters."""
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
