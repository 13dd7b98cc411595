"""Segment preview latency on a 1M-person snapshot, and event delivery to a local webhook.

1. Uses bench/lookup.py's 1M-person lake (built once under bench/.cache/lookup-1m) and a fresh
   operational database, so the server starts as on a first day: its deliverer logs the whole
   outbox (the initial profiles' consent and churn events) before anything else; timed.
2. Preview: POST /v1/segments/preview over HTTP for four realistic rules, 20 timed calls each
   after 3 warm-ups (count, reachable count, sample, churn-risk and value-segment spread), with
   GET /healthz on the same server as the floor.
3. Delivery: a channel subscribes a webhook (a receiver in this process that checks every
   signature) to consent changes; 50,000 events are appended to ops.outbox as gold writes them,
   and the time until the receiver has every one is measured (events per second, and the lag
   from the change to its arrival); then 20 single events one at a time (the lag of one change
   on a quiet system). Baseline: this process posting the same signed batches to the same
   receiver directly (the receiver's and HTTP's floor).

Prints one JSON line. Run: .venv/bin/python bench/segments.py  (no arguments)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lookup import ensure_lake  # noqa: E402
from bench.receiver import Receiver  # noqa: E402
from bench.server import ServeProcess  # noqa: E402
from pipelines.activation.events import EventStore  # noqa: E402
from pipelines.activation.webhooks import signed_headers  # noqa: E402
from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.lakehouse.catalog import OUTBOX, PROFILES  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.ops.keys import KeyStore  # noqa: E402
from pipelines.profile.state import OUTBOX_SCHEMA  # noqa: E402

RULES: dict[str, Any] = {
    "churn_vip": {
        "and": [
            {"attr": "churn_risk", "op": ">=", "value": 0.6},
            {"attr": "value_segment", "op": "=", "value": "SEG-VIP"},
        ]
    },
    "quiet_small_tariffs": {
        "and": [
            {"attr": "last_interaction_ts", "op": "older_than", "days": 14},
            {"attr": "tariff_id", "op": "in", "values": ["T-MINI", "T-START"]},
        ]
    },
    "heavy_data_no_cases": {
        "and": [
            {"attr": "data_bytes_30d", "op": ">=", "value": 28_000_000_000},
            {"not": {"attr": "open_cases", "op": ">", "value": 0}},
        ]
    },
    "nested_any_of": {
        "or": [
            {
                "and": [
                    {"attr": "monthly_spend", "op": "between", "low": 400_000, "high": 800_000},
                    {"attr": "tariff_id", "op": "=", "value": "T-MAX"},
                ]
            },
            {"attr": "churn_risk", "op": ">=", "value": 0.8},
        ]
    },
}
CALLS, WARMUP = 20, 3
EVENTS = 50_000
SINGLES = 20  # then events one at a time: the lag of a change on a quiet system
SECRET = "bench-webhook-secret-0123456789"


def step(msg: str) -> None:
    print(f"[bench/segments] {msg}", file=sys.stderr, flush=True)


def timed(call: Any, n: int, warmup: int) -> list[float]:
    """Milliseconds of `n` calls after `warmup` untimed ones; each must answer 200."""
    out = []
    for i in range(warmup + n):
        started = time.perf_counter()
        r = call()
        ms = (time.perf_counter() - started) * 1000
        if r.status_code != 200:
            raise SystemExit(f"{r.request.url}: HTTP {r.status_code}: {r.text[:300]}")
        if i >= warmup:
            out.append(ms)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def wait(what: str, done: Any, timeout: float) -> float:
    started = time.perf_counter()
    while not done():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.perf_counter() - started


def outbox_events(persons: list[str], n: int) -> pa.Table:
    now = datetime.now(UTC)
    tag = f"{time.time_ns()}"
    return pa.Table.from_pylist(
        [
            {
                "event_id": f"consent.changed:{persons[i % len(persons)]}:bench-{tag}-{i}",
                "event_type": "consent.changed",
                "person_id": persons[i % len(persons)],
                "related_person_id": None,
                "profile_version": i,
                "payload": json.dumps({"purpose": "marketing", "granted": i % 2 == 0}),
                "occurred_at": now,
            }
            for i in range(n)
        ],
        OUTBOX_SCHEMA,
    )


def floor_events_per_s(receiver: Receiver, bodies: list[bytes], batch: int) -> float:
    """Post signed batches to the receiver from here, one after another (no queue, no DB)."""
    with httpx.Client() as client:
        started = time.perf_counter()
        for i, body in enumerate(bodies):
            r = client.post(
                f"{receiver.url}/floor",
                content=body,
                headers=signed_headers(SECRET, f"floor-{i}", body),
            )
            r.raise_for_status()
        return len(bodies) * batch / (time.perf_counter() - started)


def data_root(cache: Path) -> Path:
    """A fresh data root on the cached 1M lake: its tables linked, except ops.outbox, which
    this benchmark appends to and so gets its own copy (the cache stays as built)."""
    root = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    for layer in (cache / "lake").iterdir():
        if layer.name != "ops":
            (root / "lake").mkdir(exist_ok=True)
            (root / "lake" / layer.name).symlink_to(layer)
    built = Lake(cache / "lake").read_arrow(OUTBOX)
    keep = pc.invert(pc.match_substring(built.column("event_id"), ":bench-"))
    Lake(root / "lake").append_once(OUTBOX, built.filter(keep), {}, stage="bench")
    return root


class Arrivals:
    """The events the receiver got so far, checked against those a step waits for (parsing only
    the requests not yet counted keeps the check cheap)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.got: set[str] = set()
        self.seen = 0
        self.expected: set[str] = set()

    def arrived(self) -> bool:
        new = self.receiver.at("/events", 200)[self.seen :]
        self.seen += len(new)
        self.got.update(e["event_id"] for r in new for e in r.json()["events"])
        return self.got >= self.expected


def previews(client: httpx.Client, marketing: str) -> dict[str, Any]:
    """p50/p95 of each rule's preview and its member count."""
    figures: dict[str, Any] = {}
    for name, rule in RULES.items():
        body = {"purpose": "marketing", "rule": rule}
        last: dict[str, Any] = {}

        def call(body: dict[str, Any] = body, last: dict[str, Any] = last) -> Any:
            r = client.post("/v1/segments/preview", json=body, headers={"X-API-Key": marketing})
            last.update(r.json())
            return r

        ms = timed(call, CALLS, WARMUP)
        figures[f"preview_{name}_p50_ms"] = pct(ms, 0.5)
        figures[f"preview_{name}_p95_ms"] = pct(ms, 0.95)
        figures[f"preview_{name}_members"] = last["members"]
        step(
            f"preview {name}: p50 {pct(ms, 0.5)} ms, {last['members']:,} members, "
            f"{last['reachable']:,} reachable"
        )
    return figures


def delivery(lake: Lake, persons: list[str], receiver: Receiver, batch: int) -> dict[str, Any]:
    """A burst of EVENTS outbox events to a subscribed webhook, then SINGLES one at a time:
    throughput against the receiver's own floor, and the lags."""
    events = outbox_events(persons, EVENTS)
    arrivals = Arrivals(receiver)
    arrivals.expected = set(events.column("event_id").to_pylist())
    started = time.perf_counter()
    lake.append_once(OUTBOX, events, {}, stage="bench")
    wait("every event at the receiver", arrivals.arrived, 900)
    total_s = time.perf_counter() - started  # from the outbox append, as gold writes it
    requests = receiver.at("/events", 200)
    if not all(r.signed for r in requests):
        raise SystemExit("a delivery failed the signature check")
    appended = events.column("occurred_at")[0].as_py().timestamp()
    lags = [r.at - appended for r in requests]
    step(f"burst delivered at {EVENTS / total_s:,.0f} events/s; now one event at a time")
    single = []
    for i in range(SINGLES):
        one = outbox_events(persons[i:], 1)
        arrivals.expected = set(one.column("event_id").to_pylist())
        started = time.perf_counter()
        lake.append_once(OUTBOX, one, {}, stage="bench")
        wait("a single event", arrivals.arrived, 60)
        single.append(time.perf_counter() - started)
    bodies = [r.body for r in requests[: max(1, 5000 // batch)]]
    floor = floor_events_per_s(receiver, bodies, batch)
    return {
        "delivered_events": EVENTS,
        "delivery_events_per_s": round(EVENTS / total_s),
        "single_event_lag_p50_s": round(statistics.median(single), 2),
        "single_event_lag_max_s": round(max(single), 2),
        "delivery_lag_p50_s": round(statistics.median(lags), 2),
        "delivery_lag_max_s": round(max(lags), 2),
        "floor_events_per_s": round(floor),
        "ratio": round(EVENTS / total_s / floor, 3),
        "batch_events": batch,
    }


def main() -> None:
    root = data_root(ensure_lake())
    url = f"sqlite:///{root / 'ops.sqlite'}"
    env = {"CDP_DATA_ROOT": str(root)}
    settings = load_settings(PROJECT_ROOT / "conf", env={**os.environ, **env})
    lake = Lake(settings.paths.lake_root)
    keys = KeyStore(url)
    marketing = keys.create("bench-segments", "marketing")
    channel = keys.create("bench-segments nba", "channel", "nba_engine")
    persons = lake.read_polars(PROFILES, ["person_id"]).get_column("person_id").to_list()
    receiver = Receiver(SECRET)
    store = EventStore(url)

    step(f"starting `cdp serve` on {len(persons):,} profiles with an empty ops database")
    server = ServeProcess(root, {**env, "CDP_EVENTS_POLL_S": "0.05"})
    try:
        initial_log_s = wait(
            "the initial outbox log and fan-out",
            lambda: (
                store.cursor("outbox") is not None and (store.cursor("fanout") or 0) >= store.head()
            ),
            600,
        )
        logged = store.head()
        step(
            f"ready in {server.ready_s:.1f} s; outbox of {logged:,} events logged in "
            f"{initial_log_s:.1f} s more"
        )
        client = httpx.Client(base_url=server.url, timeout=60)
        health = timed(lambda: client.get("/healthz"), CALLS, WARMUP)
        figures: dict[str, Any] = {"persons": len(persons), "healthz_p50_ms": pct(health, 0.5)}
        figures |= previews(client, marketing)
        step(f"delivery: subscribing a webhook and appending {EVENTS:,} events to the outbox")
        sub = client.post(
            "/v1/subscriptions",
            json={
                "event_types": ["consent.changed"],
                "url": f"{receiver.url}/events",
                "secret": SECRET,
            },
            headers={"X-API-Key": channel},
        )
        sub.raise_for_status()
        figures |= delivery(lake, persons, receiver, settings.api.events.batch)
        figures |= {
            "initial_outbox_events": logged,
            "initial_log_s": round(initial_log_s, 1),
            "cores": os.cpu_count(),
        }
        client.close()
    finally:
        server.stop()
        receiver.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
