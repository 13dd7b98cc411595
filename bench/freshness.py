"""End-to-end freshness: from an event posted to the collector to a lookup that shows it, while
`cdp stream` and `cdp serve` run.

1. Generates a small operator (300 lines, 5 days) and runs `cdp run` once, so the stream starts
   on a built lake (checkpoints, identity, gold).
2. Starts `cdp serve` and `cdp stream` as separate processes, with a source key for the app feed
   and a channel key for the self-care app.
3. Posts app `open` events, one at a time, each for a different person (app user and line from
   the identity map, event time just after the newest event in the lake), and polls that
   person's profile every 20 ms until its profile_version moves: the event went collector ->
   landing file -> bronze -> silver -> identity -> gold -> snapshot -> lookup. The first event
   is a warm-up and not counted.
4. Baseline in the same run, with the stream stopped: a profile changed directly in gold, timed
   until the lookup shows it (the serving part alone: snapshot poll and reload).

Prints one JSON line. Run: .venv/bin/python bench/freshness.py  (no arguments; ~5 min)
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import polars as pl
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server import ServeProcess  # noqa: E402
from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.lakehouse.catalog import MAP, PROFILES  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.ops.keys import KeyStore  # noqa: E402

EVENTS = 30
BASELINE = 10
CDP = str(ROOT / ".venv" / "bin" / "cdp")


def step(msg: str) -> None:
    print(f"[bench/freshness] {msg}", file=sys.stderr, flush=True)


def wait_for(what: str, check: Any, timeout: float, every: float = 0.02) -> float:
    """Seconds until `check()` is true (raises after `timeout`)."""
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"{what}: not seen within {timeout:.0f} s")
        time.sleep(every)
    return time.perf_counter() - started


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-fresh-"))
    env = {**os.environ, "CDP_DATA_ROOT": str(root)}
    settings = load_settings(PROJECT_ROOT / "conf", env=env)
    step("generating a small operator and running the pipeline once")
    subprocess.run(
        [CDP, "generate", "--subscribers", "300", "--days", "5", "--files-per-source", "2"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run([CDP, "run"], env=env, check=True, stdout=subprocess.DEVNULL)
    lake = Lake(settings.paths.lake_root)
    keys = KeyStore(settings.database_url)
    source_key = keys.create("bench app feed", "source", "app")
    channel_key = keys.create("bench app", "channel", "mobile_app")

    ids = lake.read_polars(MAP, ["id_type", "id_value", "person_id"], pl.col("valid_to").is_null())
    apps = ids.filter(pl.col("id_type") == "app_user_id").unique("person_id", keep="first")
    lines = ids.filter(pl.col("id_type") == "msisdn").unique("person_id", keep="first")
    people = (
        apps.join(lines, on="person_id", suffix="_line")
        .sort("person_id")
        .head(EVENTS + 1)
        .select("person_id", "id_value", "id_value_line")
        .rows()
    )
    newest = cast(
        datetime, lake.read_polars(PROFILES, ["last_event_ts"]).get_column("last_event_ts").max()
    )

    # the figures are the server's, not a channel's rate limit
    server = ServeProcess(root, {"CDP_API_RATE_LIMIT_LOOKUP": "1000000/second"})
    stream = subprocess.Popen(
        [CDP, "stream"], env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    client = httpx.Client(base_url=server.url, timeout=10)

    def version(person: str) -> int:
        got = client.get(f"/v1/profiles/person_id/{person}", headers={"X-API-Key": channel_key})
        return int(got.json()["profile_version"]) if got.status_code == 200 else -1

    try:
        step(f"stream and API up; posting {EVENTS + 1} events one at a time")
        seen = []
        for i, (person, app_user, msisdn) in enumerate(people):
            before = version(person)
            event = {
                "event_id": f"fresh-{i}",
                "source": "app",
                "event_type": "open",
                "event_ts": (newest + timedelta(seconds=i + 1)).isoformat(),
                "schema_version": 1,
                "app_user_id": app_user,
                "msisdn": msisdn,
                "platform": "android",
            }
            posted = client.post("/v1/collect/app", json=event, headers={"X-API-Key": source_key})
            if posted.status_code != 202:
                raise SystemExit(f"collector said {posted.status_code}: {posted.text}")
            took = wait_for(f"event {i}", lambda p=person, b=before: version(p) > b, timeout=120)
            step(f"event {i}: visible after {took:.2f} s" + (" (warm-up)" if i == 0 else ""))
            if i:
                seen.append(took)

        os.killpg(stream.pid, signal.SIGINT)
        stream.wait(timeout=120)
        step(f"stream stopped; baseline: {BASELINE} profiles changed directly in gold")
        rows = lake.read_arrow(PROFILES).to_pylist()[:BASELINE]
        floor = []
        for row in rows:
            before = version(row["person_id"])
            row["profile_version"] = before + 1
            lake.upsert(
                PROFILES,
                pa.Table.from_pylist([row], lake.arrow_schema(PROFILES)),
                "person_id",
                delete_keys=[],
                stage="bench",
            )
            floor.append(
                wait_for("a gold change", lambda r=row, b=before: version(r["person_id"]) > b, 60)
            )
    finally:
        if stream.poll() is None:
            os.killpg(stream.pid, signal.SIGINT)
            stream.wait(timeout=120)
        server.stop()

    figures = {
        "events": len(seen),
        "p50_s": round(statistics.median(seen), 2),
        "p95_s": round(float(np.percentile(seen, 95)), 2),
        "max_s": round(max(seen), 2),
        "baseline_serving_only_p50_s": round(statistics.median(floor), 2),
        "baseline_serving_only_max_s": round(max(floor), 2),
        "trigger_interval_s": settings.engine.trigger_interval_s,
        "snapshot_poll_s": settings.api.snapshot_poll_s,
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
