"""Freshness at operator scale: from an event's 202 at the collector to the lookup that shows it,
on a 1M-subscriber lake, while `cdp stream` runs under a sustained load from all four sources.

1. Builds the lake once into bench/.cache/fresh-1000000 (delete it to rebuild): a small real
   operator through `cdp generate` and `cdp run` (every table, checkpoint and contract as the
   pipeline makes them), then grown to 1M subscribers: identity evidence for 1M persons (one
   line each, families, passports, emails, app users; bench/identity.Population) resolved by
   the real `rebuild_identity`, 30 days of daily usage and settled facts for their identifiers
   (bench/gold), every profile built by `recompute_profiles`. Each run works on a copy.
2. Starts `cdp serve` (its deliverer off: the figures are the profile's) and `cdp stream`, then
   a load process posting LOAD_RATE events/s to the collector on a constant schedule, split over
   network (data sessions), billing (payments), app (opens) and crm (cases), for random persons.
3. Every PROBE_EVERY seconds, an app `open` for a person kept out of the load; its latency runs
   from the POST to the first lookup whose profile_version moved (polled by person id every
   50 ms at first, then every twentieth of the time waited, at most every 0.5 s). Every
   CONSENT_EVERY seconds, a marketing consent withdrawal for a person who had granted it; its
   latency runs to the first lookup by a marketing-only channel (sms_campaigns) that no longer
   serves the person's marketing attributes.
4. Stage times per probe, from the tables' commit times (delta-rs history): landing (the
   collector's durable write, to the 202), bronze and silver (the commits that hold the event
   id), identity (the next identity-map commit), gold (the next gold.profiles commit) and
   serving (the lookup). Whether the stream keeps up: the probes' median in the first and the
   last minute.
5. Steps 2-4 again on a fresh copy with the Kafka source (docs/kafka.md): a single-node broker
   on loopback (tests/kafka.py; its JVM shares the cores), the collector publishing to the
   topics (its 202 is the brokers' acknowledgement), the stream reading them. Its figures are
   the same keys prefixed `kafka_`.

Prints one JSON line. Run: .venv/bin/python bench/freshness.py  (no arguments; ~16 min after the
lake's first build)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server import ServeProcess, rss_mb  # noqa: E402
from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.lakehouse.catalog import MAP, PROFILES, bronze_table  # noqa: E402
from pipelines.lakehouse.kafka import init_topics  # noqa: E402
from pipelines.lakehouse.reader import LakeReader  # noqa: E402
from pipelines.ops.keys import KeyStore  # noqa: E402
from tests.kafka import Broker, kafka_broker  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "fresh"  # + -<subscribers>
SUBSCRIBERS = 1_000_000  # lines, one person each (families share an account)
LOAD_RATE = 2000.0  # events/s over the four sources
TICK_S = 0.25  # one batch per source per tick
RUN_S = 300.0
WARMUP_S = 60.0  # the stream's first micro-batches (JVM, first reads) are not measured
PROBE_EVERY = 1.4  # > 200 probes in RUN_S
CONSENT_EVERY = 10.0
PROBE_POOL = 5_000  # persons kept out of the load
CDP = str(ROOT / ".venv" / "bin" / "cdp")


def step(msg: str) -> None:
    print(f"[bench/freshness] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the lake


def _append_staged(lake: Any, table: str, rows: pl.DataFrame, schema: Any, txn: str) -> None:
    """Append generated rows through Parquet files Spark reads in splits (tens of millions of
    rows do not fit a task's heap in one piece), once (`txn` names the write)."""
    staged = Path(tempfile.mkdtemp(prefix="cdp-bench-stage-"))
    try:
        pq.write_table(
            rows.to_arrow().select(schema.names).cast(schema),
            staged / "rows.parquet",
            row_group_size=500_000,
        )
        lake.append_once(table, lake.spark.read.parquet(str(staged)), {txn: 1}, stage="bench")
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _grow(root: str, subscribers: int) -> None:
    """In a child process: 1M persons' evidence, identity, usage, facts and profiles. Each step
    leaves a mark in the cache folder, so a build stopped half-way resumes after the last one."""
    from bench.gold import daily_usage, facts
    from bench.identity import Population
    from pipelines.identity.stage import rebuild_identity
    from pipelines.lakehouse.catalog import DAILY, EVIDENCE, FACTS
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.spark import spark_session
    from pipelines.profile.facts import DAILY_SCHEMA, FACTS_SCHEMA
    from pipelines.profile.stage import recompute_profiles

    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": root})
    engine = settings.engine.model_copy(update={"driver_memory": "12g"})
    spark = spark_session(engine, app_name="bench-freshness-build")
    lake = Lake(settings.paths.lake_root, spark)
    marks, t = Path(root), time.perf_counter()
    if not (marks / "identity-done").exists():
        population, rows = Population(seed=11), 0
        while population.built < subscribers:
            end = min(population.built + 100_000, subscribers)
            chunk = population.build(end, population.built)
            txn = {"bench-freshness": population.built}
            lake.append_once(EVIDENCE, chunk, txn, stage="bench")
            rows += chunk.num_rows
        step(f"evidence: {rows:,} rows ({time.perf_counter() - t:.0f} s)")
        full = rebuild_identity(spark, lake, settings)
        step(f"identity: {full.persons:,} persons ({time.perf_counter() - t:.0f} s)")
        (marks / "identity-done").touch()
    today = datetime.now(UTC).date()
    if not (marks / "inputs-done").exists():
        nodes = lake.read_polars(MAP, where=pl.col("valid_to").is_null())
        rng = np.random.default_rng(11)
        _append_staged(lake, DAILY, daily_usage(rng, nodes, today), DAILY_SCHEMA, "bench-daily")
        _append_staged(lake, FACTS, facts(rng, nodes, today), FACTS_SCHEMA, "bench-facts")
        del nodes
        step(f"usage and facts written ({time.perf_counter() - t:.0f} s)")
        (marks / "inputs-done").touch()
    result = recompute_profiles(lake, settings, today)
    step(f"profiles: {result.created:,} created ({time.perf_counter() - t:.0f} s)")
    spark.stop()


def ensure_lake(subscribers: int) -> Path:
    cache = CACHE.parent / f"fresh-{subscribers}"
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(cache)})
    if (cache / "built").exists():
        step(f"using the {subscribers:,}-subscriber lake in {cache}")
        return cache
    env = {**os.environ, "CDP_DATA_ROOT": str(cache)}
    if not (cache / "operator-done").exists():
        shutil.rmtree(cache, ignore_errors=True)
        step(f"building a {subscribers:,}-subscriber lake in {cache} (once; ~40 min at 1M)")
        start = (datetime.now(UTC).date() - timedelta(days=2)).isoformat()
        subprocess.run(
            [CDP, "generate", "--subscribers", "300", "--days", "2", "--start-date", start],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run([CDP, "run"], env=env, check=True, stdout=subprocess.DEVNULL)
        (cache / "operator-done").touch()
    else:
        step(f"resuming the build of {cache}")
    child = multiprocessing.get_context("spawn").Process(
        target=_grow, args=(str(cache), subscribers)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"growing the lake failed (exit {child.exitcode}); see above")
    if LakeReader(settings.paths.lake_root).rows(PROFILES) < subscribers * 0.9:
        raise SystemExit("the grown lake has fewer profiles than subscribers")
    (cache / "built").write_text(datetime.now(UTC).isoformat())
    return cache


def working_copy(cache: Path, kind: str) -> Path:
    """A data root of its own per measured run (`kind`), its lake copied from the cache."""
    root = cache.parent / f"{cache.name}-run-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    # The lake only: the stream starts with empty landing folders and checkpoints of its own
    # (the build's name the build's paths), so it ingests exactly what the run posts.
    shutil.copytree(cache / "lake", root / "lake", ignore=shutil.ignore_patterns("_serving"))
    return root


# ---------------------------------------------------------------------------- load and probes


def load_ticks(
    people: dict[str, list[Any]], seed: int
) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The load, a tick at a time: LOAD_RATE * TICK_S events split over the four sources (data
    sessions, payments and CRM cases for random lines, app opens for random app users)."""
    rng = np.random.default_rng(seed)
    per_tick = max(1, int(LOAD_RATE * TICK_S / 4))
    lines, apps = people["lines"], people["apps"]
    n = 0
    while True:
        now = datetime.now(UTC).isoformat()
        batches: dict[str, list[dict[str, Any]]] = {
            s: [] for s in ("network", "billing", "app", "crm")
        }
        for i in rng.integers(0, len(lines), per_tick * 3):
            msisdn, account = lines[i]
            n += 1
            kind = n % 3
            if kind == 0:
                batches["network"].append(
                    _event(
                        "network",
                        "data_session_end",
                        n,
                        now,
                        msisdn=msisdn,
                        session_id=f"l{n}",
                        bytes_up=1000,
                        bytes_down=250_000,
                        duration_s=30,
                    )
                )
            elif kind == 1:
                batches["billing"].append(
                    _event(
                        "billing",
                        "payment",
                        n,
                        now,
                        msisdn=msisdn,
                        account_id=account,
                        amount=5000,
                        currency="UZS",
                        balance_after=20_000,
                    )
                )
            else:
                batches["crm"].append(
                    _event(
                        "crm",
                        "case",
                        n,
                        now,
                        case_id=f"c{n}",
                        account_id=account,
                        msisdn=msisdn,
                        category="network",
                        status="open",
                    )
                )
        for i in rng.integers(0, len(apps), per_tick):
            app_user, msisdn = apps[i]
            n += 1
            batches["app"].append(
                _event(
                    "app", "open", n, now, app_user_id=app_user, msisdn=msisdn, platform="android"
                )
            )
        yield batches


def _load(url: str, keys: dict[str, str], people: dict[str, list[Any]], stop: Any) -> None:
    """Post LOAD_RATE events/s in batches, a constant schedule (late ticks are sent at once)."""
    client = httpx.Client(base_url=url, timeout=30)
    start = time.perf_counter()
    for tick, batches in enumerate(load_ticks(people, int(time.time()))):
        if stop.is_set():
            return
        due = start + tick * TICK_S
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        for source, events in batches.items():
            body = "".join(json.dumps(e) + "\n" for e in events)
            client.post(
                f"/v1/collect/{source}",
                content=body,
                headers={"X-API-Key": keys[source], "Content-Type": "application/x-ndjson"},
            )


def _event(source: str, event_type: str, n: int, ts: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{source}-load-{os.getpid()}-{n}",
        "source": source,
        "event_type": event_type,
        "event_ts": ts,
        "schema_version": 1,
        **fields,
    }


def poll_interval(waited: float) -> float:
    """How long a probe waits before its next lookup: 50 ms at first, then a twentieth of the
    time waited, at most 0.5 s. The error it adds stays under 5% of a latency above 1 s, and
    the probes' own lookups stay a small load: polling every 50 ms, two hundred probes waiting
    on a stream that fell behind made ~4,000 lookups/s, a core of the two the stream needs."""
    return min(0.5, max(0.05, waited / 20))


class Probes:
    """Probe events posted on a schedule, each watched until its lookup shows it."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url, self.keys = url, keys
        self.results: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.started = 0.0  # when the probes' schedule began (perf_counter)

    def _lookup(self, client: httpx.Client, person: str, key: str) -> httpx.Response:
        return client.get(f"/v1/profiles/person_id/{person}", headers={"X-API-Key": key})

    def app_open(self, n: int, person: str, app_user: str, msisdn: str, *, measured: bool) -> None:
        """An app open for `person`, seen when their profile_version moves."""
        event = _event(
            "app",
            "open",
            n,
            datetime.now(UTC).isoformat(),
            app_user_id=app_user,
            msisdn=msisdn,
            platform="ios",
        )
        event["event_id"] = f"probe-{n}"

        def moved(got: httpx.Response, first: httpx.Response) -> bool:
            version = int(first.json()["profile_version"])
            return got.status_code == 200 and int(got.json()["profile_version"]) > version

        self._probe("open", event, person, "mobile_app", moved, measured)

    def withdrawal(self, n: int, person: str, msisdn: str, *, measured: bool) -> None:
        """A marketing consent withdrawn, seen when a marketing-only channel no longer gets the
        person's marketing attributes."""
        event = _event(
            "crm",
            "consent",
            n,
            datetime.now(UTC).isoformat(),
            msisdn=msisdn,
            purpose="marketing",
            granted=False,
            legal_basis="consent",
            channel="sms",
        )
        event["event_id"] = f"consent-{n}"

        def withheld(got: httpx.Response, _first: httpx.Response) -> bool:
            return got.status_code == 404 or "primary_msisdn" not in got.json()["attributes"]

        self._probe("consent", event, person, "sms_campaigns", withheld, measured)

    def _probe(
        self,
        kind: str,
        event: dict[str, Any],
        person: str,
        channel: str,
        shown: Any,
        measured: bool,
    ) -> None:
        """In a thread: look the person up, post `event` to the collector, then look them up
        every 50 ms until `shown(lookup, first lookup)` (or 300 s)."""

        def run() -> None:
            client = httpx.Client(base_url=self.url, timeout=30)
            key, source = self.keys[channel], str(event["source"])
            first = self._lookup(client, person, key)
            sent = time.perf_counter()
            posted = client.post(
                f"/v1/collect/{source}", json=event, headers={"X-API-Key": self.keys[source]}
            )
            accepted = time.perf_counter()
            assert posted.status_code == 202, posted.text
            while (waited := time.perf_counter() - accepted) < 300:
                if shown(self._lookup(client, person, key), first):
                    self._record(kind, event["event_id"], person, sent, accepted, measured)
                    return
                time.sleep(poll_interval(waited))
            self._record(kind, event["event_id"], person, sent, None, measured)

        self._start(run)

    def _start(self, run: Any) -> None:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _record(
        self,
        kind: str,
        event_id: str,
        person: str,
        sent: float,
        accepted: float | None,
        measured: bool,
    ) -> None:
        seen = time.perf_counter()
        with self.lock:
            self.results.append(
                {
                    "kind": kind,
                    "event_id": event_id,
                    "person": person,
                    "sent": sent,
                    "accepted": accepted,
                    "latency_s": None if accepted is None else seen - accepted,
                    "seen_wall": time.time(),
                    "landing_s": None if accepted is None else accepted - sent,
                    "measured": measured,
                }
            )


# ---------------------------------------------------------------------------- stage times


def _commits(lake: LakeReader, table: str, since_ms: float) -> list[tuple[int, float]]:
    """(version, commit time in epoch seconds) of `table`'s commits after `since_ms`."""
    dt = lake.table(table)
    if dt is None:
        return []
    out = [
        (int(h["version"]), h["timestamp"] / 1000)
        for h in dt.history()
        if h.get("timestamp", 0) >= since_ms
    ]
    return sorted(out)


def _holding(
    lake: LakeReader, table: str, commits: list[tuple[int, float]], ids: set[str]
) -> dict[str, float]:
    """event id -> commit time of the `table` version that appended it."""
    found: dict[str, float] = {}
    for version, at in commits:
        if version == 0:
            continue
        rows = lake.appended(table, version - 1, version, ["event_id"])
        for event_id in set(rows.column("event_id").to_pylist()) & ids:
            found.setdefault(event_id, at)
    return found


def _next(commits: list[tuple[int, float]], after: float) -> float | None:
    return next((at for _, at in commits if at >= after), None)


def stage_times(root: Path, probes: list[dict[str, Any]], since: float) -> dict[str, float]:
    """Median seconds per stage over the app probes, from commit times."""
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    lake = LakeReader(settings.paths.lake_root)
    since_ms = since * 1000
    opens = [p for p in probes if p["kind"] == "open" and p["latency_s"] is not None]
    ids = {p["event_id"] for p in opens}
    silver = f"silver.{settings.contract('app').domain}"
    bronze_at = _holding(
        lake, bronze_table("app"), _commits(lake, bronze_table("app"), since_ms), ids
    )
    silver_at = _holding(lake, silver, _commits(lake, silver, since_ms), ids)
    identity = _commits(lake, MAP, since_ms)
    gold = _commits(lake, PROFILES, since_ms)
    stages: dict[str, list[float]] = {
        k: [] for k in ("landing", "bronze", "silver", "identity", "gold", "serving")
    }
    for p in opens:
        accepted_wall = p["seen_wall"] - p["latency_s"]
        b, s = bronze_at.get(p["event_id"]), silver_at.get(p["event_id"])
        if b is None or s is None:
            continue
        i = _next(identity, s) or s
        g = _next(gold, i)
        if g is None:
            continue
        stages["landing"].append(p["landing_s"])
        stages["bronze"].append(b - accepted_wall)
        stages["silver"].append(s - b)
        stages["identity"].append(i - s)
        stages["gold"].append(g - i)
        stages["serving"].append(p["seen_wall"] - g)
    return {f"stage_{k}_p50_s": round(statistics.median(v), 2) for k, v in stages.items() if v}


# ---------------------------------------------------------------------------- run


def _quantiles(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_count": 0}
    return {
        f"{prefix}_count": len(values),
        f"{prefix}_p50_s": round(float(np.percentile(values, 50)), 2),
        f"{prefix}_p95_s": round(float(np.percentile(values, 95)), 2),
        f"{prefix}_p99_s": round(float(np.percentile(values, 99)), 2),
        f"{prefix}_max_s": round(max(values), 2),
    }


def _people(lake: LakeReader) -> tuple[dict[str, list[Any]], list[Any], list[Any]]:
    """The load's persons (lines with their account, app users with their line) and two pools
    kept out of it: app users for the open probes, marketing consenters for the withdrawals."""
    current = lake.read_polars(
        MAP, ["id_type", "id_value", "person_id", "account_id"], pl.col("valid_to").is_null()
    )
    lines = current.filter(pl.col("id_type") == "msisdn").unique("person_id", keep="first")
    apps = current.filter(pl.col("id_type") == "app_user_id").unique("person_id", keep="first")
    both = apps.join(lines, on="person_id", suffix="_line").sort("person_id")
    opens = both.head(PROBE_POOL)
    held = set(opens["person_id"].to_list())
    consents = (
        lake.read_polars(
            PROFILES, ["person_id", "primary_msisdn"], pl.col("consent_marketing_granted")
        )
        .filter(~pl.col("person_id").is_in(list(held)))
        .sort("person_id")
        .head(PROBE_POOL)
    )
    held |= set(consents["person_id"].to_list())
    free = ~pl.col("person_id").is_in(list(held))
    people = {
        "lines": lines.filter(free).select("id_value", "account_id").rows(),
        "apps": both.filter(free).select("id_value", "id_value_line").rows(),
    }
    return people, opens.select("person_id", "id_value", "id_value_line").rows(), consents.rows()


def _drive(
    probes: Probes, opens: list[Any], consents: list[Any], pids: dict[str, int]
) -> dict[str, float]:
    """Probes on their schedules through the warm-up and the run; the peak RSS of each
    process in `pids` (with its children)."""
    peak = dict.fromkeys(pids, 0.0)
    started = time.perf_counter()
    n, next_probe, next_consent = 0, started, started + CONSENT_EVERY / 2
    while (elapsed := time.perf_counter() - started) < WARMUP_S + RUN_S:
        measured = elapsed >= WARMUP_S
        now = time.perf_counter()
        if now >= next_probe:
            probes.app_open(n, *opens[n % len(opens)], measured=measured)
            n, next_probe = n + 1, next_probe + PROBE_EVERY
        if now >= next_consent:
            probes.withdrawal(n, *consents[n % len(consents)], measured=measured)
            n, next_consent = n + 1, next_consent + CONSENT_EVERY
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_mb(pid))
        time.sleep(0.05)
    probes.started = started
    return peak


def _figures(probes: Probes) -> dict[str, Any]:
    measured = [r for r in probes.results if r["measured"]]

    def latencies(kind: str, window: tuple[float, float] | None = None) -> list[float]:
        return [
            r["latency_s"]
            for r in measured
            if r["kind"] == kind
            and r["latency_s"] is not None
            and (window is None or window[0] <= r["sent"] - probes.started < window[1])
        ]

    first = latencies("open", (WARMUP_S, WARMUP_S + 60))
    last = latencies("open", (WARMUP_S + RUN_S - 60, WARMUP_S + RUN_S))
    return {
        **_quantiles(latencies("open"), "lookup"),
        **_quantiles(latencies("consent"), "consent_withdrawal"),
        "not_seen_within_300_s": sum(1 for r in measured if r["latency_s"] is None),
        "first_minute_p50_s": round(statistics.median(first), 2) if first else None,
        "last_minute_p50_s": round(statistics.median(last), 2) if last else None,
    }


def _measure(cache: Path, subscribers: int, broker: Broker | None) -> dict[str, Any]:
    """One measured run on a fresh copy of the lake: the collector writes landing files, or
    (with `broker`) publishes to Kafka topics the stream reads."""
    root = working_copy(cache, "kafka" if broker else "files")
    env = {**os.environ, "CDP_DATA_ROOT": str(root)}
    if broker is not None:
        env |= {
            "CDP_SOURCE_KIND": "kafka",
            "CDP_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "CDP_KAFKA_TOPIC_PREFIX": f"fresh{int(time.time())}.",
        }
    settings = load_settings(PROJECT_ROOT / "conf", env=env)
    if broker is not None:
        # a partition per core: on 2 cores, more partitions only add tasks per micro-batch
        cfg = settings.source.kafka.model_copy(update={"partitions": 2})
        init_topics(cfg, settings.sources)
    store = KeyStore(settings.database_url)
    keys = {
        s: store.create(f"bench {s}", "source", s) for s in ("network", "billing", "app", "crm")
    }
    keys["mobile_app"] = store.create("bench app", "channel", "mobile_app")
    keys["sms_campaigns"] = store.create("bench sms", "channel", "sms_campaigns")
    step("reading the persons the load and the probes use")
    people, opens, consents = _people(LakeReader(settings.paths.lake_root))
    extra = {k: v for k, v in env.items() if k.startswith("CDP_")}
    server = ServeProcess(
        root,
        {**extra, "CDP_EVENTS_DELIVER": "false", "CDP_API_RATE_LIMIT_LOOKUP": "1000000/second"},
    )
    stream = subprocess.Popen(
        [CDP, "stream"],
        env=env,
        start_new_session=True,
        stdout=(root / "stream.log").open("wb"),  # its progress, kept beside the run's lake
        stderr=subprocess.STDOUT,
    )
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    loader = ctx.Process(target=_load, args=(server.url, keys, people, stop))
    probes = Probes(server.url, keys)
    since = time.time()
    pids = {"server": server.process.pid, "stream": stream.pid}
    if broker is not None and broker.proc is not None:
        pids["broker"] = broker.proc.pid
    try:
        loader.start()
        source = "Kafka topics" if broker else "landing files"
        step(
            f"{source}: load at {LOAD_RATE:.0f} events/s; {WARMUP_S:.0f} s of warm-up, "
            f"then {RUN_S:.0f} s"
        )
        peak = _drive(probes, opens, consents, pids)
        step("load stopped; waiting for the probes in flight")
        stop.set()
        loader.join(timeout=30)
        for thread in probes.threads:
            thread.join(timeout=300)
    finally:
        stop.set()
        if loader.is_alive():
            loader.terminate()
        os.killpg(stream.pid, signal.SIGINT)
        try:
            stream.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(stream.pid, signal.SIGKILL)
        server.stop()
    measured = [r for r in probes.results if r["measured"]]
    figures = {
        **_figures(probes),
        **stage_times(root, measured, since),
        **{f"{name}_peak_rss_mb": round(mb) for name, mb in peak.items()},
    }
    step(f"{'kafka' if broker else 'files'}: {json.dumps(figures)}")  # kept if a later run fails
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=SUBSCRIBERS, help="a smaller lake")
    subscribers = parser.parse_args().subscribers
    cache = ensure_lake(subscribers)
    files = _measure(cache, subscribers, None)
    step("the same with the Kafka source (a single-node broker on loopback)")
    with kafka_broker(heap_mb=1024) as broker:
        kafka = _measure(cache, subscribers, broker)
    figures: dict[str, Any] = {
        "subscribers": subscribers,
        "load_events_per_s": LOAD_RATE,
        "run_s": RUN_S,
        **files,
        **{f"kafka_{k}": v for k, v in kafka.items()},
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
