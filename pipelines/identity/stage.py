"""Identity drivers: silver -> evidence -> links, identity map, person changes and accounts.

`refresh_identity` runs after each silver micro-batch: it appends the batch's evidence, gathers
the regions the new evidence touches and re-resolves only those (`resolve` is a pure function of
a region's evidence). `rebuild_identity` (`full.py`) resolves every region from all evidence on
Spark: the first build, the scheduled full recompute, and the way to apply a rule change. Both
write the same tables (names and change rows in `outputs.py`):

- `silver.identity_edges`: evidence (append-only, exactly once per silver version);
- `gold.identity_links`: one row per link with validity, status (accepted/refused/member), reason;
- `gold.identity_map`: one row per identifier (tenure-scoped) with its person and account;
- `gold.person_merges`: merges (old id -> surviving id) and splits, with the linking edge;
- `gold.accounts`: account, type, holder person, member persons and lines.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Settings
from pipelines.identity.evidence import EVIDENCE_SCHEMA, derive_evidence
from pipelines.identity.full import rebuild_identity
from pipelines.identity.outputs import (
    ACCOUNTS_SCHEMA,
    CHANGED_AT,
    RESOLVED,
    IdentityResult,
    account_view,
    contact_changes,
    person_changes,
    summary,
    suspicious_links,
)
from pipelines.identity.resolve import (
    LINKS_SCHEMA,
    Blocklist,
    Resolution,
    resolve,
)
from pipelines.lakehouse.catalog import ACCOUNTS, EVIDENCE, LINKS, MAP, MERGES, silver_table
from pipelines.lakehouse.lake import Lake

__all__ = [
    "ACCOUNTS",
    "CHANGED_AT",
    "LINKS",
    "MAP",
    "MERGES",
    "RESOLVED",
    "IdentityResult",
    "collect_evidence",
    "rebuild_identity",
    "refresh_identity",
]


def collect_evidence(
    spark: SparkSession, lake: Lake, settings: Settings, until: Mapping[str, int] | None = None
) -> int:
    """Append the evidence of silver rows not yet read (up to `until`'s version of a table, the
    rows the quality gate judged), in one commit that records, per silver table, the version
    read (so a rerun after a crash adds nothing twice)."""
    frames: dict[str, DataFrame] = {}
    txns: dict[str, int] = {}
    for source in settings.identity.evidence_sources():
        silver = silver_table(settings.contract(source))
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


def write_identity(
    lake: Lake,
    resolution: Resolution,
    changes: pa.Table,
    version: int,
    *,
    old_links: pa.Table,
    old_map: pa.Table,
) -> None:
    """Person changes first (idempotent by evidence version), then map and accounts, links last:
    the links' app transaction says which evidence every identity table reflects. Only the rows
    that changed against `old_links` / `old_map` (the previous rows of the regions resolved) are
    written."""
    stage = "identity.incremental"
    meta = {"evidence_version": str(version)}
    lake.append_once(
        MERGES, changes, {f"{MERGES}<-{EVIDENCE}": version}, stage=stage, metadata=meta
    )
    links, nodes = resolution.links, resolution.nodes
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
    refused = res.links.filter(pc.equal(res.links.column("status"), "refused"))
    reasons = refused.group_by("reason_code").aggregate([("reason_code", "count")]).to_pylist()
    return summary(
        mode,
        changes,
        evidence_rows=evidence_rows,
        regions=len(pc.unique(res.links.column("region"))),
        identifiers=res.nodes.num_rows,
        persons=len(pc.unique(res.nodes.column("person_id"))),
        refused_by_reason={r["reason_code"]: r["reason_code_count"] for r in reasons},
    )
