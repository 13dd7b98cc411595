"""Profile lookups over HTTP on a 1M-person snapshot, against the same server's /healthz.

1. Builds a 1M-person operator lake once (identity map, 30 days of usage, facts, reference, then
   every gold profile: bench/gold.py's data) in a child process, and keeps it under
   bench/.cache/lookup-1m for the next run (delete the folder to rebuild; ~3 min).
2. Creates a channel key (mobile_app: the channel that sees the most attributes) and starts the
   API as `cdp serve` does (uvicorn, the configured workers) on a free loopback port; waits for
   /readyz (the snapshot load is part of the figures).
3. From this process (the server's are separate), drives 32 keep-alive connections for 10 s after
   2 s of warm-up: first GET /healthz (the framework's floor), then GET /v1/profiles/msisdn/<n>
   over random current numbers of the 1M persons. Every lookup must answer 200.

Prints one JSON line. Run: .venv/bin/python bench/lookup.py  (no arguments)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.httpload import drive, encode_get  # noqa: E402
from bench.server import HOST, ServeProcess, rss_mb  # noqa: E402
from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.lakehouse.catalog import MAP, PROFILES  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.ops.keys import KeyStore  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "lookup-1m"
CONCURRENCY = 32
SECONDS = 10.0
WARMUP = 2.0
CHANNEL = "mobile_app"


def step(msg: str) -> None:
    print(f"[bench/lookup] {msg}", file=sys.stderr, flush=True)


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "CDP_DATA_ROOT": str(root)}


def _build(root: str) -> None:
    """The 1M-person lake (in a child process: the build's memory goes with it)."""
    from bench.gold import build
    from pipelines.profile.stage import refresh_gold

    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": root})
    lake = Lake(settings.paths.lake_root)
    today = datetime.now(UTC).date()
    build(lake, settings, today)
    refresh_gold(lake, settings, today=today)


def ensure_lake() -> Path:
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(CACHE)})
    if Lake(settings.paths.lake_root).exists(PROFILES):
        step(f"using the 1M-person lake in {CACHE}")
        return CACHE
    step(f"building a 1M-person lake in {CACHE} (once; ~3 min)")
    CACHE.mkdir(parents=True, exist_ok=True)
    child = multiprocessing.get_context("spawn").Process(target=_build, args=(str(CACHE),))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building the lake failed (exit {child.exitcode}); see above")
    return CACHE


def main() -> None:
    root = ensure_lake()
    settings = load_settings(PROJECT_ROOT / "conf", env=_env(root))
    lake = Lake(settings.paths.lake_root)
    numbers = (
        lake.read_polars(MAP, ["id_type", "id_value"], pl.col("valid_to").is_null())
        .filter(pl.col("id_type") == "msisdn")
        .get_column("id_value")
        .to_list()
    )
    persons = lake.read_polars(PROFILES, ["person_id"]).height
    random.Random(5).shuffle(numbers)
    key = KeyStore(settings.database_url).create("bench-lookup", "channel", CHANNEL)

    step(f"starting `cdp serve` ({settings.api.workers} worker(s)); loading the snapshot")
    # the figures are the server's, not a channel's rate limit
    server = ServeProcess(root, {"CDP_API_RATE_LIMIT_LOOKUP": "1000000/second"})
    port = server.port
    try:
        step(f"ready in {server.ready_s:.1f} s; {persons:,} profiles, {len(numbers):,} numbers")

        step(f"GET /healthz: {CONCURRENCY} connections, {SECONDS:.0f} s")
        floor = drive(
            HOST,
            port,
            [encode_get(HOST, "/healthz")],
            concurrency=CONCURRENCY,
            seconds=SECONDS,
            warmup=WARMUP,
        )
        requests = [
            encode_get(HOST, f"/v1/profiles/msisdn/{n}", {"X-API-Key": key})
            for n in numbers[:200_000]
        ]
        step(f"GET /v1/profiles/msisdn/...: {CONCURRENCY} connections, {SECONDS:.0f} s")
        lookups = drive(
            HOST, port, requests, concurrency=CONCURRENCY, seconds=SECONDS, warmup=WARMUP
        )
        memory = rss_mb(server.process.pid)
    finally:
        server.stop()

    bad = {s: n for s, n in lookups.statuses.items() if s != 200}
    if bad or lookups.errors or floor.errors:
        raise SystemExit(f"failed requests: statuses {bad}, errors {lookups.errors[:3]}")
    figures = {
        "persons": persons,
        "concurrency": CONCURRENCY,
        "workers": settings.api.workers,
        **lookups.summary("lookup"),
        **floor.summary("healthz"),
        "ratio": round(lookups.requests / max(floor.requests, 1), 3),
        "ready_s": round(server.ready_s, 1),
        "server_rss_mb": memory,
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
