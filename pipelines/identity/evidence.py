"""Identity evidence: what silver events say about identifiers, one row per event and rule.

`derive_evidence` is the pure transform (silver frames -> evidence rows). Evidence is append-only
and independent of guardrails and blocked values, so a rule change re-resolves the same evidence
instead of re-reading silver. Rows are of four kinds:

- `merge`: the event links identifiers `a` and `b` of one person (rule, tier);
- `member`: the event relates line `a` to account `b` (role, account type), without merging;
- `opens` / `closes`: the event starts or ends a tenure of recyclable identifier `a`.

`valid_from` is the event time of a link or an opening; `valid_to` is the event time of a
closing. Tenure intervals and each link's validity are resolved from them (see resolve.py).
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.config import IdentityCfg

EVIDENCE_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("rule", pa.string()),
        ("tier", pa.int32()),
        ("a_type", pa.string()),
        ("a_value", pa.string()),
        ("b_type", pa.string()),
        ("b_value", pa.string()),
        ("role", pa.string()),
        ("account_type", pa.string()),
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("event_type", pa.string()),
        ("valid_from", pa.timestamp("us", tz="UTC")),
        ("valid_to", pa.timestamp("us", tz="UTC")),
        ("ingest_ts", pa.timestamp("us", tz="UTC")),
    ]
)


def normalise(id_type: str, value: Column) -> Column:
    """One spelling per identifier: silver already gives E.164 MSISDNs and lower-case emails;
    passports ignore case and spaces; everything is trimmed."""
    v = F.trim(value.cast("string"))
    if id_type == "email":
        v = F.lower(v)
    if id_type == "passport":
        v = F.upper(F.regexp_replace(v, r"\s+", ""))
    return F.when(F.length(v) > 0, v)


def _optional(columns: frozenset[str], name: str) -> Column:
    return F.col(name).cast("string") if name in columns else F.lit(None).cast("string")


def _row(
    columns: frozenset[str],
    *,
    kind: str,
    rule: str | None,
    tier: int | None,
    a: tuple[str, Column],
    b: tuple[str, Column] | None,
    event_type: str,
    when: Column,
) -> Column:
    """The evidence row an event yields under one rule or tenure spec, as a struct (null when
    the event does not qualify)."""
    a_type, a_value = a
    link_time = F.col("event_ts") if kind != "closes" else F.lit(None).cast("timestamp")
    close_time = F.col("event_ts") if kind == "closes" else F.lit(None).cast("timestamp")
    cond = when & (F.col("event_type") == event_type) & a_value.isNotNull()
    b_type: Column = F.lit(None).cast("string")
    b_value: Column = F.lit(None).cast("string")
    if b is not None:
        b_type, b_value = F.lit(b[0]), b[1]
        cond = cond & b_value.isNotNull()
    row = F.struct(
        F.lit(kind).alias("kind"),
        F.lit(rule).cast("string").alias("rule"),
        F.lit(tier).cast("int").alias("tier"),
        F.lit(a_type).alias("a_type"),
        a_value.alias("a_value"),
        b_type.alias("b_type"),
        b_value.alias("b_value"),
        _optional(columns, "line_role").alias("role"),
        _optional(columns, "account_type").alias("account_type"),
        F.col("event_id"),
        F.col("source"),
        F.col("event_type"),
        link_time.alias("valid_from"),
        close_time.alias("valid_to"),
        F.col("_ingest_ts").alias("ingest_ts"),
    )
    return F.when(F.coalesce(cond, F.lit(False)), row)


@lru_cache(maxsize=64)
def _evidence_of(cfg_json: str, source: str, columns: frozenset[str], app_id: str) -> Column | None:
    """The exploded array of evidence structs for events of `source` (None: no rule reads it).

    Building these expressions costs thousands of Py4J calls (about a second), more than
    running them on a micro-batch, so they are built once per config, source layout and Spark
    application."""
    cfg = IdentityCfg.model_validate_json(cfg_json)
    structs: list[Column] = []
    for name, rule in sorted(cfg.rules.items()):
        if rule.source != source:
            continue
        fa, fb = rule.link
        ta, tb = cfg.id_type(fa), cfg.id_type(fb)
        assert ta is not None and tb is not None  # checked when the config was loaded
        when: Column = F.lit(True)
        for f, allowed in rule.when.items():
            when = when & F.col(f).isin(*allowed)
        structs.append(
            _row(
                columns,
                kind=rule.kind,
                rule=name,
                tier=rule.tier,
                a=(ta, normalise(ta, F.col(fa))),
                b=(tb, normalise(tb, F.col(fb))),
                event_type=rule.event_type,
                when=when,
            )
        )
    for id_type, tenure in sorted(cfg.tenures.items()):
        for kind, events in (("opens", tenure.opens), ("closes", tenure.closes)):
            for ev in events:
                if ev.source != source:
                    continue
                structs.append(
                    _row(
                        columns,
                        kind=kind,
                        rule=None,
                        tier=None,
                        a=(id_type, normalise(id_type, F.col(ev.field))),
                        b=None,
                        event_type=ev.event_type,
                        when=F.lit(True),
                    )
                )
    return F.explode(F.array(*structs)).alias("e") if structs else None


def derive_evidence(silver: dict[str, DataFrame], cfg: IdentityCfg) -> DataFrame | None:
    """Evidence rows of the silver events in `silver` (source -> frame). None: no rule reads
    any of these sources. Each source is scanned once: every rule and tenure spec reading it
    becomes one struct of an array that is exploded."""
    cfg_json = cfg.model_dump_json()
    parts: list[DataFrame] = []
    for source, frame in sorted(silver.items()):
        app_id = frame.sparkSession.sparkContext.applicationId
        evidence = _evidence_of(cfg_json, source, frozenset(frame.columns), app_id)
        if evidence is not None:
            parts.append(frame.select(evidence).where(F.col("e").isNotNull()).select("e.*"))
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out
