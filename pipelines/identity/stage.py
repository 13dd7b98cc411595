"""Identity drivers: silver -> evidence -> links, identity map, person changes and accounts.

`refresh_identity` runs after each silver micro-batch: it appends the batch's evidence, gathers
the regions the new evidence touches and re-resolves only those (`resolve` is a pure function of
a region's evidence). `rebuild_identity` resolves every region from all evidence on Spark: the
scheduled full recompute, and the way to apply a rule change. Both write the same tables:

- `silver.identity_edges`: evidence (append-only, exactly once per silver version);
- `gold.identity_links`: one row per link with validity, status (accepted/refused/member), reason;
- `gold.identity_map`: one row per identifier (tenure-scoped) with its person and account;
- `gold.person_merges`: merges (old id -> surviving id) and splits, with the linking edge;
- `gold.accounts`: account, type, holder person, member persons and lines.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipelines.config import IdentityCfg, Settings
from pipelines.identity.components import connected_components
from pipelines.identity.evidence import EVIDENCE, EVIDENCE_SCHEMA, derive_evidence
from pipelines.identity.resolve import (
    LINKS_SCHEMA,
    NODES_SCHEMA,
    Blocklist,
    Resolution,
    resolve,
)
from pipelines.lake import Lake

LINKS = "gold.identity_links"
MAP = "gold.identity_map"
MERGES = "gold.person_merges"
ACCOUNTS = "gold.accounts"
# The evidence version the links (and so every identity table) reflect.
RESOLVED = f"{LINKS}<-{EVIDENCE}"
# Map column: the evidence version at which the row last changed (what moved since version v).
CHANGED_AT = "evidence_version"

MERGES_SCHEMA = pa.schema(
    [
        ("change", pa.string()),
        ("from_person_id", pa.string()),
        ("to_person_id", pa.string()),
        ("identifiers_moved", pa.int64()),
        ("link_rule", pa.string()),
        ("link_event_id", pa.string()),
        ("link_edge_key", pa.string()),
        ("link_event_ts", pa.timestamp("us", tz="UTC")),
        ("at", pa.timestamp("us", tz="UTC")),
        ("evidence_version", pa.int64()),
    ]
)
ACCOUNTS_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("account_type", pa.string()),
        ("holder_person_id", pa.string()),
        ("member_person_ids", pa.list_(pa.string())),
        ("lines", pa.list_(pa.string())),
        ("open_lines", pa.list_(pa.string())),
    ]
)


@dataclass
class IdentityResult:
    """What one identity refresh did."""

    mode: str = "none"  # none | incremental | full
    evidence_rows: int = 0
    regions: int = 0
    identifiers: int = 0
    persons: int = 0
    merges: int = 0
    splits: int = 0
    refused: int = 0
    seconds: float = 0.0
    rounds: int = 0  # connected-components rounds (full recompute)
    refused_by_reason: dict[str, int] = field(default_factory=dict)


def _rule_sources(cfg: IdentityCfg) -> list[str]:
    sources = {r.source for r in cfg.rules.values()}
    for t in cfg.tenures.values():
        sources |= {e.source for e in (*t.opens, *t.closes)}
    return sorted(sources)


def collect_evidence(
    spark: SparkSession, lake: Lake, settings: Settings, until: Mapping[str, int] | None = None
) -> int:
    """Append the evidence of silver rows not yet read (up to `until`'s version of a table, the
    rows the quality gate judged), in one commit that records, per silver table, the version
    read (so a rerun after a crash adds nothing twice)."""
    frames: dict[str, DataFrame] = {}
    txns: dict[str, int] = {}
    for source in _rule_sources(settings.identity):
        silver = f"silver.{settings.contract(source).domain}"
        version = lake.version(silver)
        if version is not None and until and silver in until:
            version = min(version, until[silver])
        app = f"{EVIDENCE}<-{silver}"
        since = lake.committed(EVIDENCE, app)
        # Most refreshes follow a batch of another source: skip unchanged tables before Spark
        # (and a source the gate holds before its first promotion: `until` is then -1).
        if version is None or version < 0 or (since is not None and version <= since):
            continue
        changes = lake.changes(spark, silver, since, version)
        frames[source] = changes.frame
        txns[app] = changes.to_version
    derived = derive_evidence(frames, settings.identity) if frames else None
    if derived is None:
        return 0
    rows = derived.toArrow().cast(EVIDENCE_SCHEMA)
    lake.append_once(EVIDENCE, rows, txns, stage="identity.evidence")
    return rows.num_rows


def refresh_identity(
    spark: SparkSession, lake: Lake, settings: Settings, until: Mapping[str, int] | None = None
) -> IdentityResult:
    """Bring every identity table up to the evidence in silver (up to `until`, see
    `collect_evidence`): incrementally when the tables exist, otherwise by a full build."""
    started = time.perf_counter()
    collect_evidence(spark, lake, settings, until)
    target = lake.version(EVIDENCE)
    done = lake.committed(LINKS, RESOLVED) if lake.exists(LINKS) else None
    if target is None or (done is not None and done >= target):
        return IdentityResult(seconds=time.perf_counter() - started)
    if done is None:
        result = rebuild_identity(spark, lake, settings)
    else:
        result = _incremental(lake, settings, done, target)
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- incremental


def _new_evidence(lake: Lake, since: int, until: int) -> pa.Table:
    return lake.appended(EVIDENCE, since, until).cast(EVIDENCE_SCHEMA)


def _values(table: pa.Table) -> pa.Array:
    both = pa.chunked_array(
        [*table.column("a_value").chunks, *table.column("b_value").chunks], pa.string()
    )
    return pc.unique(pc.drop_null(both))


def _in(column: str, values: pa.Array | pa.ChunkedArray) -> pl.Expr:
    return pl.col(column).is_in(pl.Series(values.to_pylist(), dtype=pl.String).implode())


def _touching(values: pa.Array) -> pl.Expr:
    return _in("a_value", values) | _in("b_value", values)


def _incremental(lake: Lake, settings: Settings, done: int, target: int) -> IdentityResult:
    """Re-resolve the regions the evidence after `done` touches, from all their evidence."""
    cfg = settings.identity
    new = _new_evidence(lake, done, target)
    if not new.num_rows:  # silver moved on without identity evidence: only the watermark moves
        lake.append_once(
            LINKS, LINKS_SCHEMA.empty_table(), {RESOLVED: target}, stage="identity.incremental"
        )
        return IdentityResult(mode="incremental")
    new_values = _values(new)
    touched = lake.read_arrow(LINKS, ["region"], _touching(new_values))
    old_regions = pc.unique(touched.column("region"))
    old_links = lake.read_arrow(LINKS, where=_in("region", old_regions))
    values = pc.unique(pa.concat_arrays([new_values, _values(old_links)]))
    gathered = lake.read_arrow(EVIDENCE, where=_touching(values), version=target)
    gathered = _anchored_in(gathered, set(values.to_pylist()), Blocklist(cfg))
    resolution = resolve(gathered, cfg)
    regions = pa.chunked_array([old_regions, pc.unique(resolution.links.column("region"))])
    old_map = lake.read_arrow(MAP, where=_in("region", regions))
    changes = pa.concat_tables(
        [
            person_changes(old_map, resolution, target),
            suspicious_links(old_links, resolution, target),
            contact_changes(old_links, resolution, target),
        ]
    )
    write_identity(lake, resolution, changes, target, old_links=old_links, old_map=old_map)
    return _summary("incremental", new.num_rows, resolution, changes)


def changed_rows(old: pa.Table, new: pa.Table, key: str) -> tuple[pa.Table, list[str]]:
    """Rows of `new` that `old` does not hold exactly, and the keys of `old` missing from `new`:
    a copy-on-write table only rewrites the files of rows that really changed."""
    if not old.num_rows:
        return new, []
    o = pl.from_arrow(old.select(new.schema.names).cast(new.schema))
    n = pl.from_arrow(new)
    assert isinstance(o, pl.DataFrame) and isinstance(n, pl.DataFrame)
    o = o.select(pl.col(key), o.hash_rows(seed=7).alias("_row"))
    n = n.with_columns(n.hash_rows(seed=7).alias("_row"))
    fresh = n.join(o, on=[key, "_row"], how="anti").drop("_row")
    gone = o.join(n.select(key), on=key, how="anti").get_column(key).to_list()
    return fresh.to_arrow().cast(new.schema), gone


def _anchored_in(evidence: pa.Table, values: set[str], blocked: Blocklist) -> pa.Table:
    """Rows whose region anchor (`a`, or `b` when `a` is blocked) is one of `values`: a member
    row whose account happens to be gathered belongs to its line's region, not this one."""
    at, av = evidence.column("a_type").to_pylist(), evidence.column("a_value").to_pylist()
    bv = evidence.column("b_value").to_pylist()
    keep = [
        a in values or (b in values and blocked.reason(t, a) is not None)
        for t, a, b in zip(at, av, bv, strict=True)
    ]
    return evidence.filter(pa.array(keep))


# ---------------------------------------------------------------- full recompute


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
    evidence = lake.read_spark(spark, EVIDENCE)
    with_regions, rounds = assign_regions(evidence, settings.identity)
    say(f"regions: connected components in {rounds} rounds ({_since(started)})")
    resolution = resolve_on_spark(with_regions, settings.identity, spark)
    say(f"resolved {resolution.nodes.num_rows:,} identifiers ({_since(started)})")
    old_map = lake.read_arrow(MAP) if lake.exists(MAP) else NODES_SCHEMA.empty_table()
    old_links = lake.read_arrow(LINKS) if lake.exists(LINKS) else LINKS_SCHEMA.empty_table()
    changes = pa.concat_tables(
        [
            person_changes(old_map, resolution, target),
            suspicious_links(old_links, resolution, target),
            contact_changes(old_links, resolution, target),
        ]
    )
    say(f"{changes.num_rows:,} merges and splits against the previous map ({_since(started)})")
    write_identity(lake, resolution, changes, target, full=True, old_map=old_map)
    say(f"identity tables written ({_since(started)})")
    evidence_rows = lake.table(EVIDENCE, target).count()  # type: ignore[union-attr]
    result = _summary("full", evidence_rows, resolution, changes)
    result.rounds = rounds
    result.seconds = time.perf_counter() - started
    return result


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


def _blocked_col(cfg: IdentityCfg, id_type: str, value: str) -> F.Column:
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


def _combined_schema() -> pa.Schema:
    fields = [pa.field("row_kind", pa.string())]
    fields += [pa.field(f"l_{f.name}", f.type) for f in LINKS_SCHEMA]
    fields += [pa.field(f"n_{f.name}", f.type) for f in NODES_SCHEMA]
    return pa.schema(fields)


def resolve_on_spark(evidence: DataFrame, cfg: IdentityCfg, spark: SparkSession) -> Resolution:
    """`resolve` on each partition of whole regions (Python workers in parallel)."""
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
                if f.name.startswith(prefix):
                    cols[f.name] = t.column(name)
                else:
                    cols[f.name] = pa.nulls(n, f.type)
            yield from pa.table(cols, schema=combined).to_batches()

    # Small partitions keep each task's Arrow result small: large results travel through the
    # driver's block manager and can be evicted before they are fetched (TaskResultLost).
    parts = max(8, spark.sparkContext.defaultParallelism * 8)
    out = (
        evidence.repartition(parts, "region")
        .mapInArrow(per_partition, _spark_schema(combined))
        .toArrow()
    )
    kinds = out.column("row_kind")
    links = out.filter(pc.equal(kinds, "link"))
    nodes = out.filter(pc.equal(kinds, "node"))
    return Resolution(
        pa.table({f.name: links.column(f"l_{f.name}") for f in LINKS_SCHEMA}, LINKS_SCHEMA),
        pa.table({f.name: nodes.column(f"n_{f.name}") for f in NODES_SCHEMA}, NODES_SCHEMA),
    )


def _spark_schema(schema: pa.Schema) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


# ---------------------------------------------------------------- outputs


def person_changes(old_map: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Merges and splits between the previous person of each identifier and the new one.

    A previous person whose identifiers now all sit in one other person was merged into it
    (with the accepted link that joined them); a previous person whose identifiers now sit in
    several persons was split, and each other side is recorded.
    """
    now = datetime.now(UTC)
    old = old_map.select(["node_key", "person_id"]).rename_columns(["node_key", "old"])
    new = resolution.nodes.select(["node_key", "person_id"]).rename_columns(["node_key", "new"])
    pairs = (
        old.join(new, "node_key", join_type="inner")
        .group_by(["old", "new"])
        .aggregate([([], "count_all")])
    )
    targets = pairs.group_by("old").aggregate([([], "count_all")]).rename_columns(["old", "n"])
    pairs = pairs.join(targets, "old")
    moved = pairs.filter(
        pc.or_(pc.not_equal(pairs.column("old"), pairs.column("new")), pc.greater(pairs["n"], 1))
    ).to_pylist()
    if not moved:
        return MERGES_SCHEMA.empty_table()
    by_old: dict[str, dict[str, int]] = defaultdict(dict)
    for r in moved:
        by_old[r["old"]][r["new"]] = r["count_all"]
    joining = _joining_links(old_map, resolution, set(by_old))
    rows: list[dict[str, object]] = []
    for p, targets_of_p in sorted(by_old.items()):
        if len(targets_of_p) == 1 and p not in targets_of_p:
            ((q, n),) = targets_of_p.items()
            link = joining.get((p, q)) or next((r for (x, _), r in joining.items() if x == p), {})
            rows.append(_change("merge", p, q, n, link, now, version))
        elif len(targets_of_p) > 1:
            for q, n in sorted(targets_of_p.items()):
                if q != p:
                    rows.append(_change("split", p, q, n, {}, now, version))
    return pa.Table.from_pylist(rows, MERGES_SCHEMA)


SUSPICIOUS = "suspicious_link"  # a change row: a link the SIM-swap guard held back
CONTACT = "contact"  # a change row: a person gained or lost a household contact


def contact_changes(old_links: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Change rows for persons whose household contacts (links with status `contact`) changed,
    so gold rebuilds their profiles (no event: a contact is not an identity change)."""

    def held(links: pa.Table) -> set[tuple[str, str]]:
        rows = links.filter(pc.equal(links.column("status"), "contact"))
        return {(r["edge_key"], str(contact_person(r))) for r in rows.to_pylist()}

    new, old = held(resolution.links), held(old_links) if old_links.num_rows else set()
    now = datetime.now(UTC)
    persons = sorted({p for _, p in new ^ old if p != "None"})
    return pa.Table.from_pylist(
        [_change(CONTACT, p, p, 0, {}, now, version) for p in persons], MERGES_SCHEMA
    )


def contact_person(link: dict[str, object]) -> object:
    """The person a contact link's contact belongs to: the side that is not the contact."""
    return link["person_id"] if link["b_type"] == "email" else link["b_person_id"]


def suspicious_links(old_links: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Change rows for links the SIM-swap guard refused that were not refused so before: the
    new identifier's person (`from`) and the number's holder (`to`), for the fraud team."""
    links = resolution.links
    held = links.filter(pc.equal(links.column("reason_code"), "sim_swap_guard"))
    if not held.num_rows:
        return MERGES_SCHEMA.empty_table()
    known = set()
    if old_links.num_rows:
        before = old_links.filter(pc.equal(old_links.column("reason_code"), "sim_swap_guard"))
        known = set(before.column("edge_key").to_pylist())
    now = datetime.now(UTC)
    rows = []
    for r in held.to_pylist():
        if r["edge_key"] in known:
            continue
        # The number is the side whose node carries a tenure: its holder is the one at risk.
        number_on_b = r["b_type"] == "msisdn"
        stranger, holder = (
            (r["person_id"], r["b_person_id"])
            if number_on_b
            else (r["b_person_id"], r["person_id"])
        )
        rows.append(_change(SUSPICIOUS, stranger, holder, 1, r, now, version))
    return pa.Table.from_pylist(rows, MERGES_SCHEMA)


def _joining_links(
    old_map: pa.Table, resolution: Resolution, changed: set[str]
) -> dict[tuple[str, str], dict[str, object]]:
    """The first accepted link (by event time) joining nodes of two previous persons, for the
    previous persons in `changed`."""
    full_old = dict(
        zip(
            old_map.column("node_key").to_pylist(),
            old_map.column("person_id").to_pylist(),
            strict=True,
        )
    )
    touched = pa.array([k for k, p in full_old.items() if p in changed], pa.string())
    links = resolution.links
    links = links.filter(
        pc.and_(
            pc.equal(links.column("status"), "accepted"),
            pc.or_(
                pc.is_in(links.column("a_node"), touched),
                pc.is_in(links.column("b_node"), touched),
            ),
        )
    ).sort_by([("valid_from", "ascending"), ("edge_key", "ascending")])
    joining: dict[tuple[str, str], dict[str, object]] = {}
    for row in links.select(
        ["a_node", "b_node", "rule", "event_id", "edge_key", "valid_from"]
    ).to_pylist():
        pa_, pb = full_old.get(row["a_node"]), full_old.get(row["b_node"])
        if pa_ and pb and pa_ != pb:
            joining.setdefault((pa_, pb), row)
            joining.setdefault((pb, pa_), row)
    return joining


def _change(
    kind: str, p: str, q: str, n: int, link: dict[str, object], now: datetime, version: int
) -> dict[str, object]:
    return {
        "change": kind,
        "from_person_id": p,
        "to_person_id": q,
        "identifiers_moved": n,
        "link_rule": link.get("rule"),
        "link_event_id": link.get("event_id"),
        "link_edge_key": link.get("edge_key"),
        "link_event_ts": link.get("valid_from"),
        "at": now,
        "evidence_version": version,
    }


@dataclass
class _Account:
    account_type: str | None
    holders: list[str] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    lines: set[str] = field(default_factory=set)
    open_lines: set[str] = field(default_factory=set)


def account_view(links: pa.Table, nodes: pa.Table) -> pa.Table:
    """One row per account from its line links: type, holder person, member persons, lines."""
    person = dict(
        zip(
            nodes.column("node_key").to_pylist(),
            nodes.column("person_id").to_pylist(),
            strict=True,
        )
    )
    acc_links = links.filter(pc.equal(links.column("b_type"), "account_id"))
    accounts: dict[str, _Account] = {}
    for row in acc_links.select(
        ["b_value", "account_type", "role", "a_node", "a_value", "valid_to", "status"]
    ).to_pylist():
        if row["status"] == "refused":
            continue
        acc = accounts.setdefault(row["b_value"], _Account(row["account_type"]))
        pid = person.get(row["a_node"])
        if pid:
            acc.members.add(pid)
            if row["role"] == "holder":
                acc.holders.append(pid)
        acc.lines.add(row["a_value"])
        if row["valid_to"] is None:
            acc.open_lines.add(row["a_value"])
    rows = [
        {
            "account_id": a,
            "account_type": v.account_type,
            "holder_person_id": v.holders[0] if v.holders else None,
            "member_person_ids": sorted(v.members),
            "lines": sorted(v.lines),
            "open_lines": sorted(v.open_lines),
        }
        for a, v in sorted(accounts.items())
    ]
    return pa.Table.from_pylist(rows, ACCOUNTS_SCHEMA)


def write_identity(
    lake: Lake,
    resolution: Resolution,
    changes: pa.Table,
    version: int,
    *,
    old_links: pa.Table | None = None,
    old_map: pa.Table | None = None,
    full: bool = False,
) -> None:
    """Person changes first (idempotent by evidence version), then map and accounts, links last:
    the links' app transaction says which evidence every identity table reflects. Incremental
    writes carry only the rows that changed against `old_links` / `old_map` (the previous rows
    of the regions resolved)."""
    stage = "identity.full" if full else "identity.incremental"
    meta = {"evidence_version": str(version)}
    lake.append_once(
        MERGES, changes, {f"{MERGES}<-{EVIDENCE}": version}, stage=stage, metadata=meta
    )
    links, nodes = resolution.links, resolution.nodes
    if full:
        lake.overwrite(MAP, _stamped_map(nodes, old_map, version), stage=stage, metadata=meta)
        lake.overwrite(ACCOUNTS, account_view(links, nodes), stage=stage, metadata=meta)
        lake.overwrite(LINKS, links, stage=stage, metadata=meta, txns={RESOLVED: version})
        return
    old_links = old_links if old_links is not None else LINKS_SCHEMA.empty_table()
    old_map = old_map if old_map is not None else NODES_SCHEMA.empty_table()
    map_rows, map_gone = changed_rows(old_map, nodes, "node_key")
    map_rows = map_rows.append_column(
        CHANGED_AT, pa.array([version] * map_rows.num_rows, pa.int64())
    )
    _write_changes(lake, MAP, map_rows, old_map, "node_key", map_gone, stage, meta)
    link_rows, links_gone = changed_rows(old_links, links, "edge_key")
    if link_rows.num_rows or links_gone:
        accounts = _accounts_after(lake, link_rows, links_gone)
        if accounts.num_rows:
            stored = lake.read_arrow(
                ACCOUNTS, where=_in("account_id", accounts.column("account_id"))
            )
            account_rows, _ = changed_rows(stored, accounts, "account_id")
            _write_changes(lake, ACCOUNTS, account_rows, stored, "account_id", [], stage, meta)
        _write_changes(
            lake,
            LINKS,
            link_rows,
            old_links,
            "edge_key",
            links_gone,
            stage,
            meta,
            txns={RESOLVED: version},
        )
    else:
        lake.append_once(LINKS, LINKS_SCHEMA.empty_table(), {RESOLVED: version}, stage=stage)


def _stamped_map(nodes: pa.Table, old_map: pa.Table | None, version: int) -> pa.Table:
    """The map with each row's `evidence_version`: `version` for rows new or different from
    `old_map`, the old stamp for rows unchanged (downstream stages read what moved since)."""
    stamp = pa.array([version] * nodes.num_rows, pa.int64())
    if old_map is None or not old_map.num_rows or CHANGED_AT not in old_map.schema.names:
        return nodes.append_column(CHANGED_AT, stamp)
    fresh, _ = changed_rows(old_map, nodes, "node_key")
    kept = pl.from_arrow(old_map.select(["node_key", CHANGED_AT]))
    assert isinstance(kept, pl.DataFrame)
    kept = kept.filter(~pl.col("node_key").is_in(fresh.column("node_key").to_pylist()))
    frame = pl.from_arrow(nodes)
    assert isinstance(frame, pl.DataFrame)
    stamped = frame.join(kept, on="node_key", how="left").with_columns(
        pl.col(CHANGED_AT).fill_null(version).cast(pl.Int64)
    )
    return stamped.to_arrow().cast(nodes.schema.append(pa.field(CHANGED_AT, pa.int64())))


def _write_changes(
    lake: Lake,
    table: str,
    rows: pa.Table,
    old: pa.Table,
    key: str,
    gone: list[str],
    stage: str,
    meta: dict[str, str],
    txns: dict[str, int] | None = None,
) -> None:
    """New rows only: a plain append (no file rewritten). Updates or deletes: one MERGE."""
    if not rows.num_rows and not gone and not txns:
        return
    updates = pc.any(pc.is_in(rows.column(key), old.column(key))).as_py() if old.num_rows else False
    if not gone and not updates:
        lake.append_once(table, rows, txns or {}, stage=stage, metadata=meta)
    else:
        lake.upsert(table, rows, key, delete_keys=gone, stage=stage, metadata=meta, txns=txns)


def _accounts_after(lake: Lake, links: pa.Table, stale_links: list[str]) -> pa.Table:
    """The account rows of every account the new links mention, as they are once the links are
    written: an account's other lines may sit in regions this batch did not touch. Runs after
    the map is written, so the stored map already holds every line's current person."""
    is_account = pc.equal(links.column("b_type"), "account_id")
    accounts = pc.unique(pc.drop_null(pc.if_else(is_account, links.column("b_value"), None)))
    if not len(accounts):
        return ACCOUNTS_SCHEMA.empty_table()
    replaced = pa.concat_arrays(
        [pa.array(stale_links, pa.string()), links.column("edge_key").combine_chunks()]
    )
    stored = lake.read_arrow(
        LINKS, where=(pl.col("b_type") == "account_id") & _in("b_value", accounts)
    )
    acc_links = pa.concat_tables(
        [
            stored.filter(~pc.field("edge_key").isin(replaced)),
            links.filter(pc.field("b_value").isin(accounts)),
        ]
    )
    acc_nodes = lake.read_arrow(
        MAP, ["node_key", "person_id"], _in("node_key", acc_links.column("a_node"))
    )
    return account_view(acc_links, acc_nodes)


def _summary(mode: str, evidence_rows: int, res: Resolution, changes: pa.Table) -> IdentityResult:
    status = res.links.column("status")
    refused = res.links.filter(pc.equal(status, "refused"))
    reasons = refused.group_by("reason_code").aggregate([("reason_code", "count")]).to_pylist()
    kinds = changes.column("change")
    return IdentityResult(
        mode=mode,
        evidence_rows=evidence_rows,
        regions=len(pc.unique(res.links.column("region"))),
        identifiers=res.nodes.num_rows,
        persons=len(pc.unique(res.nodes.column("person_id"))),
        merges=pc.sum(pc.equal(kinds, "merge")).as_py() or 0,
        splits=pc.sum(pc.equal(kinds, "split")).as_py() or 0,
        refused=refused.num_rows,
        refused_by_reason={r["reason_code"]: r["reason_code_count"] for r in reasons},
    )
