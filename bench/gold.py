"""Gold profiles at scale: a full rebuild of 1M profiles, and incremental micro-batches that touch
10,000 persons of that 1M-person table.

1. Writes what the gold stage reads, straight into the lake (the generator would take longer
   than the thing measured): the identity map (1M persons, 10% with a second line, emails, app
   users, individual accounts), 30 days of daily usage per line and app user, the settled facts
   (balance, tariff, last interaction, region, consent), reference tables; empty silver tables.
2. Baseline in the same run: read the 1M-row profile table and rewrite it once, sorted, with the
   same writer (the floor of any update that touches every file).
3. Full rebuild: the first `refresh_gold` builds every profile from the daily usage and facts;
   then `recompute_profiles` rebuilds all of them again and diffs with the stored rows.
4. Incremental: micro-batches of events for 10,000 random persons (a data session, a payment and
   an app open each) are appended to silver, then `refresh_gold` is timed per batch: reading the
   new silver files, appending their daily counters and facts, rebuilding the touched persons'
   profiles from their 30 days of counters and facts, and merging the changed rows.

Prints one JSON line. Run: .venv/bin/python bench/gold.py  (no arguments; ~6 min on 2 cores)
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import PROJECT_ROOT, Settings, load_settings  # noqa: E402
from pipelines.identity.resolve import LINKS_SCHEMA, NODES_SCHEMA  # noqa: E402
from pipelines.identity.stage import CHANGED_AT, RESOLVED  # noqa: E402
from pipelines.ingest.reference import load_reference  # noqa: E402
from pipelines.lakehouse.catalog import (  # noqa: E402
    DAILY,
    FACTS,
    LINKS,
    MAP,
    PROFILES,
)
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402
from pipelines.profile.facts import DAILY_SCHEMA, FACTS_SCHEMA  # noqa: E402
from pipelines.profile.stage import recompute_profiles, refresh_gold  # noqa: E402
from pipelines.synthetic.operator import write_reference  # noqa: E402

PERSONS = 1_000_000
TOUCHED = 10_000
BATCHES = 3
DAYS = 30
TS = pl.Datetime("us", "UTC")


def step(msg: str) -> None:
    print(f"[bench/gold] {msg}", file=sys.stderr, flush=True)


def identity_map(rng: np.random.Generator, today: date) -> pl.DataFrame:
    """Nodes of PERSONS persons: one or two lines, an individual account, some emails and apps."""
    n = PERSONS
    idx = np.arange(n)
    person = "P" + pl.Series(idx).cast(pl.String).str.zfill(20)
    start = datetime.combine(today, datetime.min.time(), UTC) - timedelta(days=400)
    tenure = pl.Series(
        [start - timedelta(days=int(d)) for d in rng.integers(0, 2000, 1000)]
    ).gather(rng.integers(0, 1000, n))
    account = "AC" + pl.Series(idx).cast(pl.String).str.zfill(8)
    frames = []
    line = pl.DataFrame(
        {
            "id_type": "msisdn",
            "id_value": "99890" + pl.Series(idx).cast(pl.String).str.zfill(7),
            "tenure": tenure,
            "person_id": person,
            "account_id": account,
        }
    )
    frames.append(line)
    second = rng.random(n) < 0.10
    frames.append(
        line.filter(pl.Series(second)).with_columns(
            (pl.lit("99891") + pl.col("id_value").str.slice(5)).alias("id_value")
        )
    )
    base = pl.DataFrame({"person_id": person, "account_id": account, "i": idx})
    frames.append(
        base.select(
            pl.lit("account_id").alias("id_type"),
            pl.col("account_id").alias("id_value"),
            pl.lit(None, TS).alias("tenure"),
            "person_id",
            "account_id",
        )
    )
    for id_type, share, fmt in (("email", 0.6, "user{}@mail.uz"), ("app_user_id", 0.5, "u{}")):
        chosen = base.filter(pl.Series(rng.random(n) < share))
        head, tail = fmt.split("{}")
        frames.append(
            chosen.select(
                pl.lit(id_type).alias("id_type"),
                (pl.lit(head) + pl.col("i").cast(pl.String) + pl.lit(tail)).alias("id_value"),
                pl.lit(None, TS).alias("tenure"),
                "person_id",
                pl.lit(None, pl.String).alias("account_id"),
            )
        )
    nodes = pl.concat(
        [f.select("id_type", "id_value", "tenure", "person_id", "account_id") for f in frames]
    )
    iso = pl.col("tenure").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    key = pl.col("id_type") + pl.lit(":") + pl.col("id_value")
    return nodes.with_columns(
        pl.when(pl.col("tenure").is_not_null())
        .then(key + pl.lit("@") + iso)
        .otherwise(key)
        .alias("node_key"),
        pl.col("person_id").alias("region"),
        pl.when(pl.col("account_id").is_not_null())
        .then(pl.lit("individual"))
        .alias("account_type"),
        pl.when(pl.col("account_id").is_not_null()).then(pl.lit("holder")).alias("role"),
        pl.col("tenure").fill_null(pl.lit(start)).alias("valid_from"),
        pl.lit(None, TS).alias("valid_to"),
        pl.lit(start).cast(TS).alias("first_seen"),
        pl.lit(0, pl.Int64).alias(CHANGED_AT),
    )


def daily_usage(rng: np.random.Generator, nodes: pl.DataFrame, today: date) -> pl.DataFrame:
    """DAYS days of counters: lines active 80% of days, app users 30%."""
    frames = []
    for id_type, share in (("msisdn", 0.8), ("app_user_id", 0.3)):
        ids = nodes.filter(pl.col("id_type") == id_type).get_column("id_value")
        for d in range(DAYS):
            active = ids.filter(pl.Series(rng.random(ids.len()) < share))
            k = active.len()
            is_line = id_type == "msisdn"
            frames.append(
                pl.DataFrame(
                    {
                        "id_type": id_type,
                        "id_value": active,
                        "day": today - timedelta(days=d),
                        "data_bytes": rng.integers(0, 2_000_000_000, k)
                        if is_line
                        else np.zeros(k, np.int64),
                        "data_sessions": rng.integers(0, 6, k)
                        if is_line
                        else np.zeros(k, np.int64),
                        "payments": (rng.random(k) < 0.1).astype(np.int64)
                        if is_line
                        else np.zeros(k, np.int64),
                        "payment_amount": rng.integers(0, 5_000_000, k)
                        if is_line
                        else np.zeros(k, np.int64),
                        "app_opens": np.zeros(k, np.int64) if is_line else rng.integers(1, 5, k),
                        "events": rng.integers(1, 12, k),
                    }
                )
            )
    daily = pl.concat(frames).with_columns(
        (pl.col("payment_amount").cast(pl.Decimal(18, 2)) / 100).cast(pl.Decimal(18, 2)),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("tenure"),  # one owner per line here
    )
    return daily.sort("day", "id_type", "id_value")


def facts(rng: np.random.Generator, nodes: pl.DataFrame, today: date) -> pl.DataFrame:
    """Settled latest values: balance, tariff, interaction, region and seen per line; interaction
    and seen per app user; marketing consent for 60% of lines."""
    end = datetime.combine(today, datetime.min.time(), UTC)
    parts = []
    specs = [
        (
            "msisdn",
            "balance",
            1.0,
            lambda k: pl.Series(rng.integers(0, 100_000, k)).cast(pl.String),
        ),
        (
            "msisdn",
            "tariff",
            1.0,
            lambda k: pl.Series(["T-MINI", "T-START", "T-PLUS", "T-MAX"]).gather(
                rng.integers(0, 4, k)
            ),
        ),
        (
            "msisdn",
            "interaction",
            1.0,
            lambda k: pl.Series(["network", "payment", "contact_centre"]).gather(
                rng.integers(0, 3, k)
            ),
        ),
        (
            "msisdn",
            "region",
            1.0,
            lambda k: pl.Series(["Tashkent", "Samarkand", "Bukhara"]).gather(rng.integers(0, 3, k)),
        ),
        ("msisdn", "seen", 1.0, lambda k: pl.Series(["network"] * k)),
        ("app_user_id", "interaction", 1.0, lambda k: pl.Series(["app"] * k)),
        ("app_user_id", "seen", 1.0, lambda k: pl.Series(["app"] * k)),
        ("msisdn", "consent:marketing", 0.6, lambda k: pl.Series(["granted"] * k)),
    ]
    for id_type, fact, share, values in specs:
        rows = nodes.filter(pl.col("id_type") == id_type)
        rows = rows.filter(pl.Series(rng.random(rows.height) < share))
        k = rows.height
        parts.append(
            rows.select(
                (pl.lit(fact + "|") + pl.col("node_key")).alias("fact_key"),
                pl.lit(fact).alias("fact"),
                pl.col("node_key").alias("subject"),
                "id_type",
                "id_value",
                "node_key",
                (pl.lit(end) - pl.duration(minutes=pl.Series(rng.integers(60, 60 * 24 * 20, k))))
                .cast(TS)
                .alias("ts"),
                (pl.lit("e-") + pl.int_range(k).cast(pl.String)).alias("event_id"),
                values(k).alias("value"),
                pl.lit("consent" if fact.startswith("consent") else None, pl.String).alias(
                    "detail"
                ),
                pl.lit("app" if fact.startswith("consent") else None, pl.String).alias("channel"),
            )
        )
    return pl.concat(parts).sort("fact_key")


SILVER_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("schema_version", pa.int32()),
        ("msisdn", pa.string()),
        ("app_user_id", pa.string()),
        ("bytes_up", pa.int64()),
        ("bytes_down", pa.int64()),
        ("amount", pa.decimal128(18, 2)),
        ("balance_after", pa.decimal128(18, 2)),
        ("_ingest_ts", pa.timestamp("us", tz="UTC")),
    ]
)


def _money(units: np.ndarray) -> pa.Array:
    return pa.array([Decimal(int(u)) for u in units], pa.decimal128(18, 2))


def batch_events(
    rng: np.random.Generator, nodes: pl.DataFrame, batch: int, touched: int = TOUCHED
) -> dict[str, pa.Table]:
    """A data session end and a payment on the first line of `touched` random persons, and an
    app open by the ones with an app user: event times in the last hour."""
    now = datetime.now(UTC).replace(microsecond=0)
    width = int(nodes.get_column("person_id").str.len_chars().max() or 21) - 1  # digits after P
    persons = pl.Series(rng.choice(PERSONS, touched, replace=False)).cast(pl.String)
    persons = persons.str.zfill(width)
    chosen = nodes.filter(("P" + pl.col("person_id").str.slice(1)).is_in(("P" + persons).implode()))
    lines = chosen.filter(pl.col("id_type") == "msisdn").unique("person_id")
    apps = chosen.filter(pl.col("id_type") == "app_user_id")
    ts = lambda k: [now - timedelta(seconds=int(s)) for s in rng.integers(1, 3000, k)]  # noqa: E731

    def table(rows: dict[str, object], k: int, source: str, event_type: str) -> pa.Table:
        full = {
            "event_id": [f"{source}-{batch}-{i}" for i in range(k)],
            "source": [source] * k,
            "event_type": [event_type] * k,
            "event_ts": ts(k),
            "schema_version": [1] * k,
            "_ingest_ts": [now] * k,
            **rows,
        }
        return pa.Table.from_pydict(
            {f.name: full.get(f.name, pa.nulls(k, f.type)) for f in SILVER_SCHEMA}, SILVER_SCHEMA
        )

    k = lines.height
    msisdns = lines.get_column("id_value").to_list()
    return {
        "network": table(
            {
                "msisdn": msisdns,
                "bytes_up": rng.integers(0, 10**7, k),
                "bytes_down": rng.integers(0, 10**9, k),
            },
            k,
            "network",
            "data_session_end",
        ),
        "billing": table(
            {
                "msisdn": msisdns,
                "amount": _money(rng.integers(1000, 100_000, k)),
                "balance_after": _money(rng.integers(0, 500_000, k)),
            },
            k,
            "billing",
            "payment",
        ),
        "app": table(
            {"app_user_id": apps.get_column("id_value").to_list()}, apps.height, "app", "open"
        ),
    }


def _overwrite(lake: Lake, table: str, rows: pa.Table) -> None:
    """Write a generated table through Parquet files Spark reads in splits: handed over from
    driver memory in one piece, 30M rows of daily usage do not fit a task's heap."""
    staged = Path(tempfile.mkdtemp(prefix="cdp-bench-stage-"))
    try:
        pq.write_table(rows, staged / "rows.parquet", row_group_size=500_000)
        lake.overwrite(table, lake.spark.read.parquet(str(staged)), stage="bench")
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def build(lake: Lake, settings: Settings, today: date) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    t = time.perf_counter()
    nodes = identity_map(rng, today)
    _overwrite(
        lake,
        MAP,
        nodes.to_arrow()
        .select(NODES_SCHEMA.names + [CHANGED_AT])
        .cast(NODES_SCHEMA.append(pa.field(CHANGED_AT, pa.int64()))),
    )
    lake.append_once(LINKS, LINKS_SCHEMA.empty_table(), {RESOLVED: 0}, stage="bench")
    step(
        f"identity map: {nodes.height:,} identifiers of {PERSONS:,} persons "
        f"({time.perf_counter() - t:.0f} s)"
    )
    daily = daily_usage(rng, nodes, today)
    _overwrite(lake, DAILY, daily.to_arrow().select(DAILY_SCHEMA.names).cast(DAILY_SCHEMA))
    step(f"daily usage: {daily.height:,} rows over {DAYS} days ({time.perf_counter() - t:.0f} s)")
    del daily
    f = facts(rng, nodes, today)
    _overwrite(lake, FACTS, f.to_arrow().select(FACTS_SCHEMA.names).cast(FACTS_SCHEMA))
    step(f"facts: {f.height:,} rows ({time.perf_counter() - t:.0f} s)")
    ref = lake.root.parent / "landing" / "reference"
    write_reference(ref)
    load_reference(lake, settings.reference, ref)
    for source in ("network", "billing", "app"):
        lake.append_once(
            f"silver.{settings.contract(source).domain}",
            SILVER_SCHEMA.empty_table(),
            {},
            stage="bench",
        )
    return nodes


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-gold-"))
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    # the generated tables reach Spark from driver memory: 30M rows of daily usage need room
    engine = settings.engine.model_copy(update={"driver_memory": "12g"})
    lake = Lake(settings.paths.lake_root, spark_session(engine, app_name="bench-gold"))
    today = datetime.now(UTC).date()
    nodes = build(lake, settings, today)

    t = time.perf_counter()
    first = refresh_gold(lake, settings, today=today)
    full_build_s = time.perf_counter() - t
    assert first.mode == "full" and first.created == PERSONS, first
    step(f"full build: {first.created:,} profiles in {full_build_s:.1f} s")

    t = time.perf_counter()
    lake.recluster(PROFILES, "person_id", stage="bench.baseline")
    baseline_s = time.perf_counter() - t
    step(f"baseline: read and rewrite the {PERSONS:,}-row profile table in {baseline_s:.1f} s")

    t = time.perf_counter()
    again = recompute_profiles(lake, settings)
    recompute_s = time.perf_counter() - t
    assert again.updated == again.created == 0, again
    step(f"full recompute (diff with the stored rows, nothing to write): {recompute_s:.1f} s")

    rng = np.random.default_rng(11)
    timings = []
    for b in range(BATCHES):
        for source, rows in batch_events(rng, nodes, b).items():
            lake.append(
                f"silver.{settings.contract(source).domain}",
                rows,
                app_id="bench",
                txn_version=b + 1,
                stage="bench",
            )
        t = time.perf_counter()
        r = refresh_gold(lake, settings, today=today)
        s = time.perf_counter() - t
        assert r.mode == "incremental", r
        timings.append(s)
        step(
            f"batch {b}: {r.events:,} events, {r.persons:,} persons recomputed, "
            f"{r.updated:,} updated: {s:.2f} s"
        )

    inc = statistics.median(timings)
    print(
        json.dumps(
            {
                "persons": PERSONS,
                "touched_persons": TOUCHED,
                "incremental_median_s": round(inc, 2),
                "incremental_max_s": round(max(timings), 2),
                "full_build_s": round(full_build_s, 1),
                "full_recompute_s": round(recompute_s, 1),
                "baseline_rewrite_s": round(baseline_s, 1),
                "ratio": round(inc / baseline_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
