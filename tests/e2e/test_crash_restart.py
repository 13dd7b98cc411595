"""Chaos: a `cdp run` killed with SIGKILL again and again at random points and restarted ends
with exactly the rows of an uninterrupted run, from bronze to the gold profiles: nothing lost,
nothing twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipelines.lakehouse.lake import Lake
from tests.e2e.runs import CDP, ONE_FILE_PER_BATCH, cdp_env, conf_with, landed_twice, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


KILLS = 20


def _commits(lake_root: Path) -> int:
    """Delta commits so far, over every table of the lake."""
    return sum(1 for _ in lake_root.glob("*/*/_delta_log/*.json"))


def test_twenty_sigkills_at_random_commits_then_restart_equals_clean_run(tmp_path: Path) -> None:
    """`cdp run` is killed with SIGKILL twenty times, each time a few Delta commits after it
    restarted (a seeded draw, so a failure can be replayed): in ingestion, in identity, in gold,
    between the tables of one stage. A last run then completes, and the lake equals that of one
    uninterrupted run: no line lost, none twice, no outbox event recorded twice."""
    conf = conf_with(tmp_path, **ONE_FILE_PER_BATCH)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    landed_twice(conf, clean, crashed, files_per_source=5)
    draw = random.Random(26)
    kills = 0
    for _ in range(KILLS):
        target = _commits(crashed / "lake") + draw.randint(1, 5)
        proc = subprocess.Popen(
            [*CDP, "run"],
            env=cdp_env(conf, crashed),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the kill takes the JVM with it
        )
        deadline = time.monotonic() + 300
        while _commits(crashed / "lake") < target and proc.poll() is None:
            assert time.monotonic() < deadline, "no commit for five minutes"
            time.sleep(0.01)
        if proc.poll() is not None:
            break  # the run completed before its kill: nothing left to interrupt
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 10, f"only {kills} kills landed before the run completed"

    subprocess.run([*CDP, "run"], env=cdp_env(conf, crashed), check=True, capture_output=True)
    subprocess.run([*CDP, "run"], env=cdp_env(conf, clean), check=True, capture_output=True)
    assert snapshot(crashed) == snapshot(clean)
    ids = Lake(crashed / "lake").read_arrow("ops.outbox", ["event_id"]).column("event_id")
    assert len(ids) == len(set(ids.to_pylist())), "an outbox event was recorded twice"
