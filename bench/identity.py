"""Identity at scale: full recompute of >= 1M identifiers on local Spark, and the incremental
update of one micro-batch of 10,000 new events.

1. Writes identity evidence for a synthetic population (individual and family accounts, lines,
   SIMs, passports, emails, app users, recycled numbers) straight into silver.identity_edges:
   the generator would take longer than the thing measured.
2. Full recompute: `rebuild_identity` (Spark connected components for the regions, `resolve` per
   partition, all identity tables written). Floor in the same run: scipy's single-machine
   connected_components on the same merge edges.
3. Incremental: micro-batches of 10,000 new events are appended to the silver tables, then
   `refresh_identity` is timed per batch (reading the new silver files, deriving their evidence
   on Spark, re-resolving the touched regions, writing): five batches in the generator's event
   mix (most events are network usage, which carries no identity evidence), then five where
   every event is identity evidence (the worst case).

Prints one JSON line. Run: .venv/bin/python bench/identity.py  (no arguments; ~5 min on 2 cores)
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import SparkSession  # noqa: E402

from pipelines.config import PROJECT_ROOT, Settings, load_settings  # noqa: E402
from pipelines.identity.evidence import EVIDENCE_SCHEMA  # noqa: E402
from pipelines.identity.stage import (  # noqa: E402
    MAP,
    collect_evidence,
    rebuild_identity,
    refresh_identity,
)
from pipelines.lakehouse.catalog import EVIDENCE  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402

PERSONS = 210_000  # about 4.9 identifiers each: just over a million
BATCH_EVENTS = 10_000
BATCHES = 5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def step(msg: str) -> None:
    print(f"[bench/identity] {msg}", file=sys.stderr, flush=True)


class Population:
    """Evidence rows of a synthetic operator, in the shape the identity rules derive."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.rows: dict[str, list[object]] = {n: [] for n in EVIDENCE_SCHEMA.names}
        self.n = 0
        self.lines: list[tuple[str, str]] = []  # (msisdn, app user or "")
        self.built = 0  # persons built so far

    def add(
        self,
        kind: str,
        rule: str | None,
        a: tuple[str, str],
        b: tuple[str, str] | None,
        at: datetime,
        **extra: str,
    ) -> None:
        self.n += 1
        tier = {"crm_email": 2, "app_login_email": 3}.get(rule or "", 1) if rule else None
        values: dict[str, object] = {
            "kind": kind,
            "rule": rule,
            "tier": tier,
            "a_type": a[0],
            "a_value": a[1],
            "b_type": b[0] if b else None,
            "b_value": b[1] if b else None,
            "role": extra.get("role"),
            "account_type": extra.get("account_type"),
            "event_id": f"ev-{self.n:010d}",
            "source": "bench",
            "event_type": kind,
            "valid_from": at if kind != "closes" else None,
            "valid_to": at if kind == "closes" else None,
            "ingest_ts": T0 + timedelta(days=400, microseconds=self.n),
        }
        for k, v in values.items():
            self.rows[k].append(v)

    def line(self, p: int, k: int, acc: str, acc_type: str, role: str, at: datetime) -> str:
        msisdn, iccid = f"99890{p:07d}", f"8999801{p:010d}{k}"
        for t, v in (("msisdn", msisdn), ("iccid", iccid)):
            self.add("opens", None, (t, v), None, at)
        self.add("merge", "line_sim", ("msisdn", msisdn), ("iccid", iccid), at)
        if acc_type == "individual":
            self.add(
                "merge",
                "individual_holder",
                ("msisdn", msisdn),
                ("account_id", acc),
                at,
                role=role,
                account_type=acc_type,
            )
        else:
            self.add(
                "member",
                "account_line",
                ("msisdn", msisdn),
                ("account_id", acc),
                at,
                role=role,
                account_type=acc_type,
            )
        return msisdn

    def person(self, p: int, acc: str, acc_type: str, role: str) -> None:
        rng = self.rng
        at = T0 + timedelta(seconds=rng.randrange(300 * 86400))
        msisdn = self.line(p, 0, acc, acc_type, role, at)
        later = at + timedelta(hours=2)
        self.add("merge", "crm_passport", ("passport", f"AA{p:07d}"), ("msisdn", msisdn), later)
        email = f"person{p}@mail.uz" if rng.random() < 0.7 else None
        if email:
            self.add("merge", "crm_email", ("email", email), ("msisdn", msisdn), later)
        app = f"u{p:09d}" if rng.random() < 0.55 else ""
        if app:
            self.add("merge", "app_login_line", ("app_user_id", app), ("msisdn", msisdn), later)
            if email:
                self.add("merge", "app_login_email", ("email", email), ("app_user_id", app), later)
        self.lines.append((msisdn, app))
        if rng.random() < 0.01:  # recycled: closed, then reissued to someone new
            end = at + timedelta(days=20)
            for t, v in (("msisdn", msisdn), ("iccid", f"8999801{p:010d}0")):
                self.add("closes", None, (t, v), None, end)

    def build(self, persons: int, start: int = 0) -> pa.Table:
        """Evidence of persons `start` up to about `persons` (a family may run past it); in
        chunks, to keep a million persons' rows out of memory at once."""
        self.rows = {n: [] for n in EVIDENCE_SCHEMA.names}
        p = start
        while p < persons:
            if self.rng.random() < 0.12:
                size = self.rng.randint(2, 5)
                acc = f"FA{p:08d}"
                for k in range(size):
                    self.person(p + k, acc, "family", "holder" if k == 0 else "member")
                p += size
            else:
                self.person(p, f"AC{p:08d}", "individual", "holder")
                p += 1
        self.built = p
        return pa.table(self.rows).cast(EVIDENCE_SCHEMA)


def scipy_floor(evidence: pa.Table) -> tuple[float, int]:
    """scipy connected_components on the value-level merge edges of `evidence`."""
    merges = evidence.filter(pa.compute.equal(evidence.column("kind"), "merge"))
    a = [
        f"{t}:{v}"
        for t, v in zip(merges["a_type"].to_pylist(), merges["a_value"].to_pylist(), strict=True)
    ]
    b = [
        f"{t}:{v}"
        for t, v in zip(merges["b_type"].to_pylist(), merges["b_value"].to_pylist(), strict=True)
    ]
    ids: dict[str, int] = {}
    src = np.array([ids.setdefault(k, len(ids)) for k in a], dtype=np.int64)
    dst = np.array([ids.setdefault(k, len(ids)) for k in b], dtype=np.int64)
    t = time.perf_counter()
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(ids), len(ids)))
    n, _ = scipy_components(graph, directed=False)
    return time.perf_counter() - t, n


def silver_batch(
    pop: Population, batch: int, rng: random.Random, mix: str
) -> dict[str, list[dict]]:
    """10,000 silver events.

    `operator`: the generator's mix. 62% network events (identity does not read them), 23% app
    (5% logins, 55% opens, half with the line, 40% in-app actions), 10% payments, 4% cases, 1%
    contact updates with a new email and activations of new lines.
    `identity`: the worst case, every event is identity evidence (60% logins, 25% contact
    updates with a new email, 15% activations of new lines)."""
    now = T0 + timedelta(days=330 + batch)
    ingest = T0 + timedelta(days=500 + batch)
    out: dict[str, list[dict]] = {"app": [], "crm": [], "billing": []}
    with_app = [line for line in pop.lines if line[1]]
    for i in range(BATCH_EVENTS):
        base = {
            "event_id": f"{mix[0]}{batch}-{i:06d}",
            "event_ts": now + timedelta(seconds=i),
            "_ingest_ts": ingest,
        }
        r = rng.random()
        msisdn, app = pop.lines[rng.randrange(len(pop.lines))]
        if mix == "operator":
            if r < 0.62:
                continue  # network: not an identity source
            if r < 0.85:
                msisdn, app = with_app[rng.randrange(len(with_app))]
                a = rng.random()
                event_type = "login" if a < 0.05 else ("open" if a < 0.6 else "in_app_action")
                out["app"].append(
                    {
                        **base,
                        "source": "app",
                        "event_type": event_type,
                        "app_user_id": app,
                        "msisdn": msisdn if event_type == "login" or a < 0.33 else None,
                        "email": None,
                    }
                )
                continue
            if r < 0.99:
                source, event_type = ("billing", "payment") if r < 0.95 else ("crm", "case")
                out[source].append(
                    {**base, "source": source, "event_type": event_type, "msisdn": msisdn}
                )
                continue
            r = 0.6 if r < 0.995 else 0.9  # the 1%: a contact update or a new line
        if r < 0.6 and app:
            out["app"].append(
                {
                    **base,
                    "source": "app",
                    "event_type": "login",
                    "app_user_id": app,
                    "msisdn": msisdn,
                    "email": f"new{batch}-{i}@mail.uz" if r < 0.05 else None,
                }
            )
        elif r < 0.85:
            out["crm"].append(
                {
                    **base,
                    "source": "crm",
                    "event_type": "customer_update",
                    "account_id": "AC?",
                    "msisdn": msisdn,
                    "passport": None,
                    "email": f"upd{batch}-{i}@mail.uz",
                }
            )
        else:
            out["billing"].append(
                {
                    **base,
                    "source": "billing",
                    "event_type": "activation",
                    "msisdn": f"99899{mix[0] == 'o':d}{batch:01d}{i:05d}",
                    "iccid": f"8999802{mix[0] == 'o':d}{batch:02d}{i:08d}",
                    "account_id": f"NEW{mix[0]}{batch}-{i}",
                    "account_type": "individual",
                    "line_role": "holder",
                    "tariff_id": "T-MINI",
                }
            )
    return out


SILVER_FIELDS = (
    "msisdn",
    "iccid",
    "previous_iccid",
    "account_id",
    "account_type",
    "line_role",
    "tariff_id",
    "app_user_id",
    "email",
    "passport",
)


def _arrow(rows: list[dict]) -> pa.Table:
    """Silver-shaped rows with every field an identity rule reads, in one fixed layout (strings;
    event and ingest times as UTC timestamps)."""
    ts = pa.timestamp("us", tz="UTC")
    schema = pa.schema(
        [
            ("event_id", pa.string()),
            ("source", pa.string()),
            ("event_type", pa.string()),
            ("event_ts", ts),
            ("_ingest_ts", ts),
            *((f, pa.string()) for f in SILVER_FIELDS),
        ]
    )
    return pa.Table.from_pylist(rows, schema)


def incremental(
    spark: SparkSession, lake: Lake, settings: Settings, pop: Population, mix: str, first: int
) -> tuple[list[float], list[float]]:
    """Seconds per micro-batch, and the evidence part of it. Each batch is appended to the silver
    tables (the silver stage's work, not timed), then timed: `refresh_identity` reads the new
    silver files, derives their evidence on Spark, re-resolves the touched regions and writes."""
    rng = random.Random(3 + first)
    timings: list[float] = []
    derive_times: list[float] = []
    for batch in range(BATCHES):
        events = silver_batch(pop, batch, rng, mix)
        for source, rows in events.items():
            lake.append(
                f"silver.{settings.contract(source).domain}",
                _arrow(rows),
                app_id="bench",
                txn_version=first + batch,
                stage="bench",
            )
        t = time.perf_counter()
        derived = collect_evidence(spark, lake, settings)
        derive_s = time.perf_counter() - t
        r = refresh_identity(spark, lake, settings)
        total = time.perf_counter() - t
        assert r.mode == "incremental", r
        derive_times.append(derive_s)
        timings.append(total)
        step(
            f"{mix} mix, batch {batch}: {BATCH_EVENTS:,} events -> {derived:,} evidence "
            f"rows, {r.regions:,} regions re-resolved, {r.merges} merges, {r.splits} splits: "
            f"{total:.2f} s (evidence on Spark {derive_s:.2f} s)"
        )
    return timings, derive_times


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-identity-"))
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    lake = Lake(settings.paths.lake_root)
    pop = Population()
    evidence = pop.build(PERSONS)
    lake.append_once(EVIDENCE, evidence, {"bench": 0}, stage="bench")
    step(f"evidence: {evidence.num_rows:,} rows for {PERSONS:,} persons")

    scipy_s, scipy_components_n = scipy_floor(evidence)
    step(f"scipy: {scipy_components_n:,} components in {scipy_s:.2f} s")

    spark = spark_session(settings.engine, app_name="bench-identity")
    t = time.perf_counter()
    full = rebuild_identity(spark, lake, settings)
    full_s = time.perf_counter() - t
    identifiers = lake.table(MAP).count()  # type: ignore[union-attr]
    step(
        f"full recompute: {identifiers:,} identifiers, {full.persons:,} persons, "
        f"{full.rounds} rounds, {full_s:.1f} s"
    )

    timings, derive_times = incremental(spark, lake, settings, pop, "operator", 1)
    worst, _ = incremental(spark, lake, settings, pop, "identity", 1 + BATCHES)
    cores = spark.sparkContext.defaultParallelism
    spark.stop()
    # The first batch pays Spark's code generation for the evidence query; report the median.
    print(
        json.dumps(
            {
                "identifiers": identifiers,
                "evidence_rows": evidence.num_rows,
                "persons": full.persons,
                "full_recompute_s": round(full_s, 1),
                "rounds": full.rounds,
                "scipy_s": round(scipy_s, 3),
                "ratio": round(scipy_s / full_s, 4),
                "incremental_events": BATCH_EVENTS,
                "incremental_median_s": round(statistics.median(timings), 2),
                "incremental_max_s": round(max(timings), 2),
                "incremental_evidence_median_s": round(statistics.median(derive_times), 2),
                "incremental_identity_only_median_s": round(statistics.median(worst), 2),
                "cores": cores,
            }
        )
    )


if __name__ == "__main__":
    main()
