"""Chaos: `cdp stream` killed with SIGKILL again and again at random points and restarted ends
with exactly the rows of an uninterrupted run, from bronze to the gold profiles: nothing lost,
nothing twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from pipelines.lakehouse.lake import Lake
from tests.e2e.runs import CDP, ONE_FILE_PER_BATCH, cdp_env, conf_with, landed_twice, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


KILLS = 12  # each restart pays a JVM start; 12 kills of 1-10 commits still reach gold


def _commits(lake_root: Path) -> int:
    """Delta commits so far, over every table of the lake."""
    return sum(1 for _ in lake_root.glob("*/*/_delta_log/*.json"))


def _kill_point(draw: random.Random) -> tuple[int, float]:
    """Where the next kill lands: after 1-10 more commits (a full run makes ~65, so the kills
    reach identity and gold), or (one time in five) a random moment of the start-up, before the
    restarted stream committed anything (reference loads, checkpoint recovery, query start)."""
    if draw.random() < 0.2:
        return 1, draw.uniform(1.0, 12.0)
    return draw.randint(1, 10), 300.0


def test_repeated_sigkills_of_the_stream_then_restart_equals_clean_run(tmp_path: Path) -> None:
    """`cdp stream` is killed with SIGKILL twelve times at seeded random points (so a failure
    can be replayed): during start-up, in ingestion, in identity, in gold, between the tables of
    one stage. A `cdp run` then finishes what is left, and the lake equals that of one
    uninterrupted run: no line lost, none twice, no outbox event recorded twice."""
    conf = conf_with(tmp_path, **ONE_FILE_PER_BATCH)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    landed_twice(conf, clean, crashed, files_per_source=3)
    draw = random.Random(26)
    for _ in range(KILLS):
        more, within_s = _kill_point(draw)
        target = _commits(crashed / "lake") + more
        proc = subprocess.Popen(
            [*CDP, "stream"],
            env=cdp_env(conf, crashed),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # the kill takes the JVM with it
        )
        deadline = time.monotonic() + within_s
        while _commits(crashed / "lake") < target and time.monotonic() < deadline:
            assert proc.poll() is None, f"the stream exited with {proc.returncode}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    subprocess.run([*CDP, "run"], env=cdp_env(conf, crashed), check=True, capture_output=True)
    subprocess.run([*CDP, "run"], env=cdp_env(conf, clean), check=True, capture_output=True)
    assert snapshot(crashed) == snapshot(clean)
    # A trigger crossing twice in its window repeats its id by design (the event log keeps it
    # once); every other change is recorded once.
    outbox = Lake(crashed / "lake").read_polars("ops.outbox", ["event_id", "event_type"])
    ids = outbox.filter(pl.col("event_type") != "trigger.fired")["event_id"]
    assert ids.is_unique().all(), "an outbox event was recorded twice"
