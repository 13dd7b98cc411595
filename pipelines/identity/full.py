"""The full identity recompute on Spark: every region resolved from all evidence, and the
identity tables replaced, with no table-sized data on the driver.

Connected components (`components.py`) give each evidence row its region; `resolve` runs per
partition of whole regions in Python workers; the map (each row stamped with the evidence
version it last changed at), the accounts and the links are written from the executors. Only
what moved against the previous tables (merges, splits, SIM-swap suspicions, contact changes)
and counts reach the driver, and go through the same row builders as the incremental path.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipelines.config import IdentityCfg, Settings
from pipelines.identity.components import connected_components
from pipelines.identity.evidence import EVIDENCE_SCHEMA
from pipelines.identity.outputs import (
    ACCOUNT_LINK_COLUMNS,
    ACCOUNTS_SCHEMA,
    CHANGED_AT,
    JOINING_COLUMNS,
    MERGES_SCHEMA,
    RESOLVED,
    IdentityResult,
    account_view,
    contact_rows,
    merge_rows,
    summary,
    suspicious_rows,
)
from pipelines.identity.resolve import LINKS_SCHEMA, NODES_SCHEMA, resolve
from pipelines.lakehouse.catalog import ACCOUNTS, EVIDENCE, LINKS, MAP, MERGES
from pipelines.lakehouse.lake import Lake, sized

STAGE = "identity.full"


@dataclass(frozen=True)
class SparkResolution:
    """`resolve`'s links and nodes as Spark frames (persisted on the executors)."""

    links: DataFrame
    nodes: DataFrame
    link_rows: int
    node_rows: int


def rebuild_identity(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    progress: Callable[[str], None] | None = None,
) -> IdentityResult:
    """Resolve every region from all evidence (Spark connected components for the regions, then
    `resolve` per partition of whole regions) and replace the identity tables."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    target = lake.version(EVIDENCE)
    if target is None:
        return IdentityResult()
    evidence = lake.read_spark(spark, EVIDENCE, version=target)
    with_regions, rounds = assign_regions(evidence, settings.identity)
    say(f"regions: connected components in {rounds} rounds ({_since(started)})")
    combined = _resolved(with_regions, settings.identity, spark)
    try:
        res = _split(combined)
        say(f"resolved {res.node_rows:,} identifiers ({_since(started)})")
        old_map = lake.read_spark(spark, MAP) if lake.exists(MAP) else None
        old_links = lake.read_spark(spark, LINKS) if lake.exists(LINKS) else None
        changes = pa.concat_tables(
            [
                _person_changes(spark, old_map, res, target),
                _suspicious(old_links, res, target),
                _contacts(old_links, res, target),
            ]
        )
        say(f"{changes.num_rows:,} merges and splits against the previous map ({_since(started)})")
        _write(lake, res, changes, target, old_map)
        say(f"identity tables written ({_since(started)})")
        evidence_rows = lake.table(EVIDENCE, target).count()  # type: ignore[union-attr]
        result = _summary(res, changes, evidence_rows)
    finally:
        combined.unpersist()
    result.rounds = rounds
    result.seconds = time.perf_counter() - started
    return result


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


# ---------------------------------------------------------------- regions


def _blocked_col(cfg: IdentityCfg, id_type: str, value: str) -> Column:
    """Spark twin of `Blocklist.reason(...) is not None` for the columns `id_type`, `value`."""
    cond = F.lit(False)
    for t, vals in cfg.blocked.values.items():
        cond = cond | ((F.col(id_type) == t) & F.col(value).isin(*vals))
    for t, pats in cfg.blocked.patterns.items():
        for p in pats:
            cond = cond | ((F.col(id_type) == t) & F.col(value).rlike(p))
    return F.coalesce(cond, F.lit(False))


def assign_regions(evidence: DataFrame, cfg: IdentityCfg) -> tuple[DataFrame, int]:
    """Evidence with its `region`: Spark connected components over merge evidence between
    non-blocked values, named after their first-seen value (the same name `regions_of` gives);
    and the number of rounds the components took."""
    ev = (
        evidence.withColumn("_ka", F.concat_ws(":", "a_type", "a_value"))
        .withColumn(
            "_kb",
            F.when(F.col("b_value").isNotNull(), F.concat_ws(":", "b_type", "b_value")),
        )
        .withColumn("_a_blocked", _blocked_col(cfg, "a_type", "a_value"))
        .withColumn(
            "_b_blocked",
            F.col("b_value").isNull() | _blocked_col(cfg, "b_type", "b_value"),
        )
    )
    pairs = (
        ev.where((F.col("kind") == "merge") & ~F.col("_a_blocked") & ~F.col("_b_blocked"))
        .select(F.col("_ka").alias("a"), F.col("_kb").alias("b"))
        .distinct()
    )
    keys = pairs.select(F.col("a").alias("k")).union(pairs.select(F.col("b").alias("k"))).distinct()
    # Ids in key order: stable across evaluations (no monotonically_increasing_id under AQE).
    indexed = keys.select(
        "k", (F.row_number().over(Window.orderBy("k")) - 1).cast("long").alias("id")
    ).localCheckpoint(eager=True)
    edges = (
        pairs.join(indexed.withColumnRenamed("k", "a").withColumnRenamed("id", "src"), "a")
        .join(indexed.withColumnRenamed("k", "b").withColumnRenamed("id", "dst"), "b")
        .select("src", "dst")
    )
    found = connected_components(edges)
    # A region is named after its first-seen value (the same rule as `regions_of`).
    seen = F.struct(F.col("ingest_ts"), F.col("event_id"))
    first = (
        ev.select(F.col("_ka").alias("k"), seen.alias("first"))
        .unionByName(
            ev.where(F.col("_kb").isNotNull()).select(F.col("_kb").alias("k"), seen.alias("first"))
        )
        .groupBy("k")
        .agg(F.min("first").alias("first"))
    )
    members = found.assignment.join(indexed, found.assignment.node == indexed.id).join(first, "k")
    names = members.groupBy("component").agg(
        F.min(F.struct("first", "k")).getField("k").alias("region")
    )
    region_of = members.join(names, "component").select(F.col("k").alias("_anchor"), "region")
    anchored = ev.withColumn(
        "_anchor",
        F.when(F.col("_a_blocked") & ~F.col("_b_blocked"), F.col("_kb")).otherwise(F.col("_ka")),
    )
    with_regions = (
        anchored.join(region_of, "_anchor", "left")
        .withColumn("region", F.coalesce("region", "_anchor"))
        .drop("_ka", "_kb", "_a_blocked", "_b_blocked", "_anchor")
    )
    return with_regions, found.rounds


# ---------------------------------------------------------------- resolve per partition


def _combined_schema() -> pa.Schema:
    fields = [pa.field("row_kind", pa.string())]
    fields += [pa.field(f"l_{f.name}", f.type) for f in LINKS_SCHEMA]
    fields += [pa.field(f"n_{f.name}", f.type) for f in NODES_SCHEMA]
    return pa.schema(fields)


def _resolved(evidence: DataFrame, cfg: IdentityCfg, spark: SparkSession) -> DataFrame:
    """`resolve` on each partition of whole regions (Python workers in parallel): links and
    nodes in one frame (`row_kind`), persisted, since the writes and the diffs all read it."""
    combined = _combined_schema()
    columns = EVIDENCE_SCHEMA.names

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tables = [pa.Table.from_batches([b]) for b in batches]
        if not tables:
            return
        ev = pa.concat_tables(tables).select(columns).cast(EVIDENCE_SCHEMA)
        res = resolve(ev, cfg)
        for prefix, t, kind in (("l_", res.links, "link"), ("n_", res.nodes, "node")):
            n = t.num_rows
            cols = {"row_kind": pa.array([kind] * n, pa.string())}
            for f in combined:
                if f.name == "row_kind":
                    continue
                name = f.name[2:]
                cols[f.name] = t.column(name) if f.name.startswith(prefix) else pa.nulls(n, f.type)
            yield from pa.table(cols, schema=combined).to_batches()

    parts = max(8, spark.sparkContext.defaultParallelism * 8)
    return (
        evidence.repartition(parts, "region")
        .mapInArrow(per_partition, from_arrow_schema(combined))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


def _split(combined: DataFrame) -> SparkResolution:
    """Links and nodes out of the combined frame, and their row counts (the job that fills the
    persisted frame)."""
    counts: dict[str, int] = {
        r["row_kind"]: r["count"] for r in combined.groupBy("row_kind").count().collect()
    }

    def part(kind: str, prefix: str, schema: pa.Schema) -> DataFrame:
        return combined.where(F.col("row_kind") == kind).select(
            *[F.col(f"{prefix}{name}").alias(name) for name in schema.names]
        )

    return SparkResolution(
        part("link", "l_", LINKS_SCHEMA),
        part("node", "n_", NODES_SCHEMA),
        counts.get("link", 0),
        counts.get("node", 0),
    )


# ---------------------------------------------------------------- what moved


def _person_changes(
    spark: SparkSession, old_map: DataFrame | None, res: SparkResolution, version: int
) -> pa.Table:
    """`outputs.person_changes` with the joins on Spark: only the moved persons' pairs and the
    links that joined them reach the driver."""
    if old_map is None:
        return MERGES_SCHEMA.empty_table()
    old = old_map.select("node_key", F.col("person_id").alias("old"))
    pairs = (
        old.join(res.nodes.select("node_key", F.col("person_id").alias("new")), "node_key")
        .groupBy("old", "new")
        .agg(F.count(F.lit(1)).alias("count_all"))
        .withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("old")))
    )
    moved = (
        pairs.where((F.col("old") != F.col("new")) | (F.col("n") > 1))
        .select("old", "new", "count_all")
        .toArrow()
    )
    if not moved.num_rows:
        return MERGES_SCHEMA.empty_table()
    changed = F.broadcast(spark.createDataFrame(pa.table({"p": pc.unique(moved.column("old"))})))
    side = old_map.select("node_key", "person_id")
    sides = (
        res.links.where(F.col("status") == "accepted")
        .select(*JOINING_COLUMNS)
        .join(side.toDF("a_node", "a_old"), "a_node")
        .join(side.toDF("b_node", "b_old"), "b_node")
        .where(F.col("a_old") != F.col("b_old"))
    )
    candidates = (
        sides.join(changed.toDF("a_old"), "a_old", "left_semi")
        .unionByName(sides.join(changed.toDF("b_old"), "b_old", "left_semi"))
        .distinct()
    )
    return merge_rows(moved.to_pylist(), candidates.toArrow(), version)


def _suspicious(old_links: DataFrame | None, res: SparkResolution, version: int) -> pa.Table:
    """`outputs.suspicious_links` on Spark: links newly held by the SIM-swap guard."""
    guarded = F.col("reason_code") == "sim_swap_guard"
    held = res.links.where(guarded)
    if old_links is not None:
        held = held.join(old_links.where(guarded).select("edge_key"), "edge_key", "left_anti")
    return suspicious_rows(held.toArrow(), version)


def _contacts(old_links: DataFrame | None, res: SparkResolution, version: int) -> pa.Table:
    """`outputs.contact_changes` on Spark: persons whose household contacts changed."""

    def held(links: DataFrame) -> DataFrame:
        person = F.when(F.col("b_type") == "email", F.col("person_id")).otherwise(
            F.col("b_person_id")
        )
        return links.where(F.col("status") == "contact").select("edge_key", person.alias("p"))

    moved = new = held(res.links)
    if old_links is not None:
        old = held(old_links)
        moved = new.subtract(old).union(old.subtract(new))
    persons = moved.where(F.col("p").isNotNull()).select("p").distinct().toArrow()
    return contact_rows(set(persons.column("p").to_pylist()), version)


# ---------------------------------------------------------------- writes


def _write(
    lake: Lake, res: SparkResolution, changes: pa.Table, version: int, old_map: DataFrame | None
) -> None:
    """Person changes first (idempotent by evidence version), then map and accounts, links last:
    the links' app transaction says which evidence every identity table reflects."""
    meta = {"evidence_version": str(version)}
    lake.append_once(
        MERGES, changes, {f"{MERGES}<-{EVIDENCE}": version}, stage=STAGE, metadata=meta
    )
    stamped = sized(_stamped_map(res.nodes, old_map, version), res.node_rows)
    lake.overwrite(MAP, stamped, stage=STAGE, metadata=meta)
    lake.overwrite(ACCOUNTS, _accounts(res), stage=STAGE, metadata=meta)
    links = sized(res.links, res.link_rows)
    lake.overwrite(LINKS, links, stage=STAGE, metadata=meta, txns={RESOLVED: version})


def _stamped_map(nodes: DataFrame, old_map: DataFrame | None, version: int) -> DataFrame:
    """The map with each row's `evidence_version`: `version` for rows new or different from
    `old_map`, the old stamp for rows unchanged (downstream stages read what moved since)."""
    stamp = F.lit(version).cast("long")
    if old_map is None or not set(nodes.columns) | {CHANGED_AT} <= set(old_map.columns):
        return nodes.withColumn(CHANGED_AT, stamp)
    old = old_map.select(
        *[F.col(c).alias(f"_old_{c}") for c in nodes.columns], F.col(CHANGED_AT).alias("_stamp")
    )
    same = functools.reduce(
        operator.and_, [F.col(c).eqNullSafe(F.col(f"_old_{c}")) for c in nodes.columns]
    )
    return nodes.join(old, F.col("node_key") == F.col("_old_node_key"), "left").select(
        *nodes.columns, F.coalesce(F.when(same, F.col("_stamp")), stamp).alias(CHANGED_AT)
    )


def _accounts(res: SparkResolution) -> DataFrame:
    """`outputs.account_view` per partition of whole accounts, each line link with its person."""
    person = res.nodes.select(F.col("node_key").alias("a_node"), F.col("person_id").alias("_p"))
    links = (
        res.links.where(F.col("b_type") == "account_id")
        .select("b_type", *ACCOUNT_LINK_COLUMNS)
        .join(person, "a_node", "left")
    )

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        chunks = list(batches)
        if not chunks:
            return
        rows = pa.Table.from_batches(chunks)
        nodes = rows.select(["a_node", "_p"]).rename_columns(["node_key", "person_id"])
        yield from account_view(rows, nodes).to_batches()

    parts = max(1, links.sparkSession.sparkContext.defaultParallelism)
    return links.repartition(parts, "b_value").mapInArrow(
        per_partition, from_arrow_schema(ACCOUNTS_SCHEMA)
    )


def _summary(res: SparkResolution, changes: pa.Table, evidence_rows: int) -> IdentityResult:
    regions = res.links.agg(F.count_distinct("region")).first()
    persons = res.nodes.agg(F.count_distinct("person_id")).first()
    reasons = res.links.where(F.col("status") == "refused").groupBy("reason_code").count().collect()
    return summary(
        "full",
        changes,
        evidence_rows=evidence_rows,
        regions=int(regions[0]) if regions else 0,
        identifiers=res.node_rows,
        persons=int(persons[0]) if persons else 0,
        refused_by_reason={r["reason_code"]: r["count"] for r in reasons},
    )
