"""Profile lookups over HTTP on a 1M-person snapshot at a fixed offered rate (open loop), idle
and while gold versions land, against the same server's /healthz at the same rate.

1. Builds a 1M-person operator lake once (identity map, 30 days of usage, facts, reference, then
   every gold profile: bench/gold.py's data) in a child process, and keeps it under
   bench/.cache/lookup-1m (delete the folder to rebuild; ~4 min). Each run works on a copy of
   its gold and identity tables, so runs start alike.
2. Starts `cdp serve` (uvicorn, the configured workers) on a free loopback port: the first start
   builds the serving base (api/base.py); then a second start shows how fast a new process is
   ready from the base on disk.
3. Open loop (bench/httpload.drive_open): RATE requests per second on a constant schedule,
   latency from each request's scheduled send time. First GET /healthz (the floor), then
   lookups by each identifier type the lake holds (msisdn, email, app user, account, person
   id), idle; then msisdn lookups while a child process (niced: on this 2-core machine it
   stands in for the stream running elsewhere) lands a gold version every few seconds, each
   touching TOUCHED persons, which the server applies from the Change Data Feed.
4. Closed loop as before (32 connections, as fast as the server answers): the saturation rate.

RSS of every server process is sampled all along (the peak of the largest process is the
figure). Every lookup must answer 200. Prints one JSON line.
Run: .venv/bin/python bench/lookup.py  (no arguments; ~12 min, plus the lake's first build)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.httpload import drive, drive_open, encode_get  # noqa: E402
from bench.server import HOST, ServeProcess  # noqa: E402
from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.lakehouse.catalog import MAP, PROFILES  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.lakehouse.reader import LakeReader  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402
from pipelines.ops.keys import KeyStore  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "lookup-1m"
RATE = 2000.0
SECONDS = 20.0
WARMUP = 3.0
LANDING_SECONDS = 60.0
TOUCHED = 3_000  # persons per gold version: ~2 s of 2,000 events/s
CONCURRENCY = 32
CHANNEL = "mobile_app"
ID_TYPES = ("msisdn", "email", "app_user_id", "account_id")


def step(msg: str) -> None:
    print(f"[bench/lookup] {msg}", file=sys.stderr, flush=True)


def _build(root: str) -> None:
    """The 1M-person lake (in a child process: the build's memory goes with it)."""
    from bench.gold import build
    from pipelines.profile.stage import refresh_gold

    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": root})
    # the generated tables reach Spark from driver memory: 30M rows of daily usage need room
    engine = settings.engine.model_copy(update={"driver_memory": "12g"})
    lake = Lake(settings.paths.lake_root, spark_session(engine, app_name="bench-lookup"))
    today = datetime.now(UTC).date()
    build(lake, settings, today)
    refresh_gold(lake, settings, today=today)


def ensure_lake() -> Path:
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(CACHE)})
    if LakeReader(settings.paths.lake_root).exists(PROFILES):
        step(f"using the 1M-person lake in {CACHE}")
        return CACHE
    step(f"building a 1M-person lake in {CACHE} (once; ~4 min)")
    CACHE.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("spawn").Process(target=_build, args=(str(CACHE),))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building the lake failed (exit {child.exitcode}); see above")
    return CACHE


def working_copy(cache: Path) -> Path:
    """A data root for this run: the cached lake copied (gold versions land in the copy)."""
    root = cache.parent / "lookup-run"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(cache / "lake", root / "lake", ignore=shutil.ignore_patterns("_serving"))
    shutil.copytree(cache / "landing", root / "landing")
    return root


def _land(root: str, stop: Any, versions: Any) -> None:
    """Gold versions, one after the other until `stop`: TOUCHED persons' new silver events, then
    the incremental gold step (what each micro-batch of the stream does)."""
    import numpy as np

    from bench.gold import batch_events
    from pipelines.profile.stage import refresh_gold

    os.nice(19)
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": root})
    lake = Lake(settings.paths.lake_root, spark_session(settings.engine, app_name="bench-writer"))
    nodes = lake.read_polars(MAP, ["id_type", "id_value", "person_id"])
    rng = np.random.default_rng(int(time.time()))
    batch = 0
    while not stop.is_set():
        batch += 1
        for source, rows in batch_events(rng, nodes, 1000 + batch, TOUCHED).items():
            table = f"silver.{settings.contract(source).domain}"
            lake.append(table, rows, app_id="bench-lookup", txn_version=batch, stage="bench")
        refresh_gold(lake, settings, today=datetime.now(UTC).date())
        versions.value = batch


class RssSampler:
    """The largest resident set of the server's processes, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mb = max(self.peak_mb, *_rss_each(self.pid), 0.0)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb, 1)


def _rss_each(pid: int) -> list[float]:
    """Resident memory of a process and of each of its children, in MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    found = []
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    found.append(int(line.split()[1]) / 1024)
    return found


def _paths(lake: LakeReader) -> dict[str, list[str]]:
    """Lookup paths per identifier type, over current identifiers of persons with a profile."""
    ids = lake.read_polars(MAP, ["id_type", "id_value", "person_id"], pl.col("valid_to").is_null())
    paths = {}
    for id_type in ID_TYPES:
        values = ids.filter(pl.col("id_type") == id_type).get_column("id_value").to_list()
        random.Random(5).shuffle(values)
        paths[id_type] = [f"/v1/profiles/{id_type}/{v}" for v in values[:200_000]]
    persons = ids.get_column("person_id").unique().to_list()
    random.Random(6).shuffle(persons)
    paths["person_id"] = [f"/v1/profiles/person_id/{p}" for p in persons[:200_000]]
    return paths


def _open(server: ServeProcess, paths: list[str], key: str | None, seconds: float) -> Any:
    headers = {"X-API-Key": key} if key else None
    requests = [encode_get(HOST, p, headers) for p in paths]
    return drive_open(HOST, server.port, requests, rate=RATE, seconds=seconds, warmup=WARMUP)


def _checked(name: str, result: Any) -> dict[str, float]:
    bad = {s: n for s, n in result.statuses.items() if s != 200}
    if bad or result.errors:
        raise SystemExit(f"{name}: failed requests: statuses {bad}, errors {result.errors[:3]}")
    return dict(result.summary(name))


def _snapshot_version(server: ServeProcess) -> int:
    import httpx

    return int(httpx.get(f"{server.url}/readyz", timeout=5).json()["snapshot_version"])


def main() -> None:
    root = working_copy(ensure_lake())
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    lake = LakeReader(settings.paths.lake_root)
    paths = _paths(lake)
    persons = lake.rows(PROFILES)
    key = KeyStore(settings.database_url).create("bench-lookup", "channel", CHANNEL)
    env = {
        "CDP_API_RATE_LIMIT_LOOKUP": "1000000/second",  # the server's figures, not a limit
        # A freshly built lake's outbox holds a million profile.created events, which a
        # deliverer would spend the run logging: lookups are measured without it.
        "CDP_EVENTS_DELIVER": "false",
    }

    step("first start: builds the serving base from gold")
    first = ServeProcess(root, env)
    first_ready_s = first.ready_s
    first.stop()
    step(f"first start ready in {first_ready_s:.1f} s; starting again from the base on disk")
    server = ServeProcess(root, env)
    figures: dict[str, Any] = {
        "persons": persons,
        "workers": settings.api.workers,
        "first_ready_s": round(first_ready_s, 2),
        "ready_s": round(server.ready_s, 2),
    }
    rss = RssSampler(server.process.pid)
    try:
        step(f"GET /healthz at {RATE:.0f}/s for {SECONDS:.0f} s (open loop)")
        figures.update(_checked("healthz", _open(server, ["/healthz"], None, SECONDS)))
        for id_type, some in paths.items():
            step(f"GET /v1/profiles/{id_type}/... at {RATE:.0f}/s for {SECONDS:.0f} s, idle")
            figures.update(_checked(f"idle_{id_type}", _open(server, some, key, SECONDS)))
        figures["idle_rss_mb"] = rss.peak_mb

        step(f"while gold versions land ({TOUCHED:,} persons each): {LANDING_SECONDS:.0f} s")
        ctx = multiprocessing.get_context("spawn")
        stop, landed = ctx.Event(), ctx.Value("i", 0)
        writer = ctx.Process(target=_land, args=(str(root), stop, landed))
        before = _snapshot_version(server)
        writer.start()
        while landed.value == 0 and writer.is_alive():  # the writer's JVM start is not measured
            time.sleep(0.5)
        busy = _open(server, paths["msisdn"], key, LANDING_SECONDS)
        stop.set()
        writer.terminate()  # the batch in hand is not waited for (its JVM ends with it)
        writer.join()
        figures.update(_checked("landing_msisdn", busy))
        figures["versions_landed"] = landed.value
        figures["versions_applied"] = _snapshot_version(server) - before

        step(f"closed loop: {CONCURRENCY} connections as fast as answered, 10 s")
        requests = [encode_get(HOST, p, {"X-API-Key": key}) for p in paths["msisdn"]]
        closed = drive(HOST, server.port, requests, concurrency=CONCURRENCY, seconds=10)
        figures["saturation_lookups_per_s"] = closed.summary("c")["c_requests_per_s"]
    finally:
        figures["peak_rss_mb"] = rss.stop()
        server.stop()
    figures["cores"] = os.cpu_count()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
