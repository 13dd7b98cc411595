"""Silver: bronze lines parsed, typed and validated against the source's contract.

`validate_events` is the pure transform: every bronze line comes out once, either typed (no reason)
or with the reason a steward reads (`missing field msisdn`, `amount: expected decimal, got "abc"`).
`refresh_silver` is the driver: it reads the bronze rows appended since the last run, writes valid
events to `silver.<domain>`, the rest to `silver.quarantine`, unknown fields to `silver.schema_drift`,
each commit keyed by the bronze version it consumed, so a rerun after a crash adds nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.config import (
    ENVELOPE_FIELDS,
    FieldSpec,
    IdentityCfg,
    Settings,
    SourceContract,
)
from pipelines.lake import Lake

QUARANTINE = "silver.quarantine"
DRIFT = "silver.schema_drift"
ISO_TS = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$"
ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
INTEGER = r"^-?\d{1,18}$"
DECIMAL = r"^-?\d{1,20}(\.\d+)?$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
ICCID = r"^89\d{16,20}$"
E164 = r"^[1-9]\d{7,14}$"
REASON_CODES = (
    "bad_json", "missing_field", "wrong_source", "unknown_schema_version", "unknown_event_type",
    "wrong_type", "junk_identifier", "future_event_time", "duplicate",
)
# Columns silver adds to the contract's fields (lineage back to bronze).
LINEAGE = ("_ingest_ts", "_file", "_unknown_fields")
QUARANTINE_COLUMNS = (
    "source", "event_id", "event_type", "reason_code", "reason", "details", "raw_line",
    "file_path", "ingest_ts", "contract_version", "bronze_version",
)


def silver_table(contract: SourceContract) -> str:
    return f"silver.{contract.domain}"


@dataclass(frozen=True)
class ValidationRules:
    """What silver needs besides the contract: identifier rules and the future-time tolerance."""

    identity: IdentityCfg
    max_future_skew_minutes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationRules:
        return cls(settings.identity, settings.engine.max_future_skew_minutes)


def _shown(v: Column) -> Column:
    """A value quoted for a reason message, cut short so a huge field cannot bloat quarantine."""
    return F.concat(F.lit('"'), F.substring(v, 1, 40), F.lit('"'))


def _reason(code: str, message: Column | str) -> Column:
    msg = F.lit(message) if isinstance(message, str) else message
    return F.struct(F.lit(code).alias("code"), msg.alias("message"))


def normalise_msisdn(v: Column, rules: ValidationRules) -> Column:
    """Digits only, international form: `+998 90 123-45-67`, `0090…` and `901234567` agree."""
    c = rules.identity.country
    digits = F.regexp_replace(F.regexp_replace(v, r"[\s\-().]", ""), r"^(\+|00)", "")
    return (
        F.when(~digits.rlike(r"^\d+$"), F.lit(None).cast("string"))
        .when(F.length(digits) == c.national_number_length, F.concat(F.lit(c.calling_code), digits))
        .when(
            (F.length(digits) == c.national_number_length + 1) & digits.startswith("0"),
            F.concat(F.lit(c.calling_code), F.substring(digits, 2, 64)),
        )
        .otherwise(digits)
    )


def typed_value(v: Column, spec: FieldSpec, rules: ValidationRules) -> Column:
    """The field's value in its silver type, or null when the text does not fit the type."""
    s = F.trim(v)
    t = spec.type
    if t == "integer":
        return F.when(s.rlike(INTEGER), s.cast("bigint"))
    if t == "decimal":
        return F.when(s.rlike(DECIMAL), s.try_cast(spec.storage_type()))
    if t == "double":
        return s.try_cast("double")
    if t == "boolean":
        return F.when(F.lower(s).isin("true", "false"), F.lower(s) == "true")
    if t == "timestamp":
        return F.when(s.rlike(ISO_TS), s.try_cast("timestamp"))
    if t == "date":
        return F.when(s.rlike(ISO_DATE), s.try_cast("date"))
    if t == "msisdn":
        n = normalise_msisdn(s, rules)
        return F.when(n.rlike(E164), n)
    if t == "iccid":
        n = F.regexp_replace(s, r"\s", "")
        return F.when(n.rlike(ICCID), n)
    if t == "email":
        n = F.lower(s)
        return F.when(n.rlike(EMAIL), n)
    if t == "enum":
        return F.when(s.isin(*(spec.values or [])), s)
    return s


TYPE_WORDS = {
    "integer": "integer", "decimal": "decimal", "double": "number", "boolean": "true or false",
    "timestamp": "ISO-8601 timestamp with offset", "date": "date YYYY-MM-DD",
    "msisdn": "MSISDN (E.164 digits)", "iccid": "ICCID (89 + 16-20 digits)",
    "email": "e-mail address", "string": "string",
}


def _id_type(name: str, spec: FieldSpec) -> str | None:
    if spec.type in ("msisdn", "email", "iccid"):
        return spec.type
    return name if name in ("passport", "app_user_id", "account_id") else None


def _junk_check(name: str, raw: Column, value: Column, id_type: str, rules: ValidationRules) -> Column | None:
    junk = rules.identity.junk
    values = junk.values.get(id_type, [])
    patterns = junk.patterns.get(id_type, [])
    if not values and not patterns:
        return None
    trimmed = F.trim(raw)
    cond = trimmed.isin(*values) | value.isin(*values) if values else F.lit(False)
    for p in patterns:
        cond = cond | trimmed.rlike(p) | F.coalesce(value.rlike(p), F.lit(False))
    return F.when(cond, _reason("junk_identifier",
                                F.concat(F.lit(f"{name}: junk identifier "), _shown(trimmed))))


def _field_checks(
    m: Column, name: str, spec: FieldSpec, rules: ValidationRules
) -> list[Column]:
    raw = m[name]
    value = typed_value(raw, spec, rules)
    present = raw.isNotNull() & (F.trim(raw) != "")
    checks = []
    if spec.required:
        checks.append(F.when(~present, _reason("missing_field", f"missing field {name}")))
    expected = TYPE_WORDS.get(spec.type) or f"one of {', '.join(spec.values or [])}"
    checks.append(F.when(present & value.isNull(), _reason(
        "wrong_type", F.concat(F.lit(f"{name}: expected {expected}, got "), _shown(raw)))))
    id_type = _id_type(name, spec)
    if id_type:
        junk = _junk_check(name, raw, value, id_type, rules)
        if junk is not None:
            checks.append(F.when(present, junk))
    return checks


def validate_events(
    bronze: DataFrame,
    contract: SourceContract,
    rules: ValidationRules,
    known_event_ids: DataFrame | None = None,
) -> DataFrame:
    """Parse and check every bronze line; returns silver columns plus `_reason_code`, `_reason`,
    `_details` (null when valid), `_unknown_fields` and the raw line for quarantine.

    `bronze` needs `raw_line`, `file_path`, `ingest_ts`. `known_event_ids` (column `event_id`)
    are ids already in silver: a line repeating one is a duplicate.
    """
    m = F.col("_m")
    df = bronze.withColumn("_m", F.from_json("raw_line", "map<string,string>"))
    version = F.when(F.trim(m["schema_version"]).rlike(r"^\d{1,9}$"),
                     F.trim(m["schema_version"]).cast("int"))
    etype = m["event_type"]
    event_ts = typed_value(m["event_ts"], FieldSpec(type="timestamp"), rules)
    known_versions = sorted(v.version for v in contract.active_versions())

    envelope = [
        F.when(F.coalesce(F.trim(m["event_id"]), F.lit("")) == "",
               _reason("missing_field", "missing field event_id")),
        F.when(m["source"].isNull(), _reason("missing_field", "missing field source"))
        .when(m["source"] != contract.source, _reason(
            "wrong_source", F.concat(F.lit(f"source: expected \"{contract.source}\", got "),
                                     _shown(m["source"])))),
        F.when(m["schema_version"].isNull(),
               _reason("missing_field", "missing field schema_version"))
        .when(~F.coalesce(version.isin(*known_versions), F.lit(False)), _reason(
            "unknown_schema_version",
            F.concat(F.lit("schema_version "), _shown(m["schema_version"]),
                     F.lit(f" is not an active version of the {contract.source} contract "
                           f"(active: {', '.join(map(str, known_versions))})")))),
        F.when(m["event_type"].isNull(), _reason("missing_field", "missing field event_type")),
        F.when(m["event_ts"].isNull(), _reason("missing_field", "missing field event_ts"))
        .when(event_ts.isNull(), _reason(
            "wrong_type", F.concat(F.lit("event_ts: expected ISO-8601 timestamp with offset, got "),
                                   _shown(m["event_ts"])))),
    ]
    blocks: list[Column] = []
    known_keys: list[Column] = []
    for v in contract.active_versions():
        types = sorted(v.event_types)
        blocks.append(F.when((version == v.version) & etype.isNotNull() & ~etype.isin(*types),
                             F.array(_reason("unknown_event_type", F.concat(
                                 F.lit("event_type "), _shown(etype),
                                 F.lit(f" is not in the {contract.source} contract v{v.version} "
                                       f"(known: {', '.join(types)})"))))))
        for t, spec in v.event_types.items():
            here = (version == v.version) & (etype == t)
            checks = [c for name, fs in spec.fields.items() for c in _field_checks(m, name, fs, rules)]
            blocks.append(F.when(here, F.array(*checks)))
            keys = F.array(*[F.lit(k) for k in (*ENVELOPE_FIELDS, *spec.fields)])
            known_keys.append(F.when(here, keys))
    skew = F.expr(f"INTERVAL {rules.max_future_skew_minutes} MINUTES")
    future = F.when(event_ts > F.col("ingest_ts") + skew, _reason(
        "future_event_time",
        F.concat(F.lit("event_ts "), _shown(m["event_ts"]),
                 F.lit(f" is more than {rules.max_future_skew_minutes} min after ingest time"))))
    empty = F.array().cast("array<struct<code:string,message:string>>")
    reasons = F.when(m.isNull(), F.array(_reason("bad_json", F.concat(
        F.lit("not a JSON object: "), _shown(F.col("raw_line")))))).otherwise(
        F.array_compact(F.concat(
            F.array(*envelope),
            *[F.coalesce(b, empty) for b in blocks],
            F.array(future),
        ))
    )
    df = df.withColumn("_reasons", reasons)
    df = df.withColumn(
        "_unknown_fields",
        # Only judged where the version and event type are known: otherwise nothing is "unknown".
        F.array_sort(F.array_except(F.map_keys(m), F.coalesce(*known_keys))),
    )

    # Duplicates among otherwise valid lines: the first by ingest order wins, later ones and ids
    # already in silver go to quarantine with the reason.
    valid = F.size("_reasons") == 0
    event_id = F.trim(m["event_id"])
    df = df.withColumn("_rank", F.when(valid, F.row_number().over(
        Window.partitionBy(valid, event_id).orderBy("ingest_ts", "file_path", "raw_line"))))
    if known_event_ids is not None:
        seen = known_event_ids.select(F.col("event_id").alias("_seen_id")).distinct()
        df = df.join(seen, event_id == F.col("_seen_id"), "left")
        already = F.col("_seen_id").isNotNull()
    else:
        already = F.lit(False)
    dup = F.when(valid & already, _reason("duplicate", F.concat(
        F.lit("duplicate event_id "), _shown(event_id), F.lit(" (already in silver)")))).when(
        valid & (F.col("_rank") > 1), _reason("duplicate", F.concat(
            F.lit("duplicate event_id "), _shown(event_id), F.lit(" (repeated in this batch)"))))
    df = df.withColumn("_reasons", F.array_compact(F.concat("_reasons", F.array(dup))))

    fields = contract.silver_fields()
    allowed: dict[str, list[Column]] = {}
    for v in contract.active_versions():
        for t, spec in v.event_types.items():
            for name in spec.fields:
                allowed.setdefault(name, []).append((version == v.version) & (etype == t))
    payload = []
    for name, spec in fields.items():
        conds = allowed.get(name)
        when_allowed = conds[0] if conds else F.lit(False)
        for c in (conds or [])[1:]:
            when_allowed = when_allowed | c
        payload.append(F.when(when_allowed, typed_value(m[name], spec, rules))
                       .cast(spec.storage_type()).alias(name))
    first = F.col("_reasons")[0]
    return df.select(
        event_id.alias("event_id"),
        m["source"].alias("source"),
        etype.alias("event_type"),
        event_ts.alias("event_ts"),
        version.alias("schema_version"),
        *payload,
        F.col("ingest_ts").alias("_ingest_ts"),
        F.col("file_path").alias("_file"),
        "_unknown_fields",
        F.when(F.size("_reasons") > 0, first["code"]).alias("_reason_code"),
        F.when(F.size("_reasons") > 0, first["message"]).alias("_reason"),
        F.when(F.size("_reasons") > 1, F.array_join(F.col("_reasons.message"), "; "))
        .alias("_details"),
        "raw_line",
    )


def silver_columns(contract: SourceContract) -> list[str]:
    return [*ENVELOPE_FIELDS, *contract.silver_fields(), *LINEAGE]


def quarantine_rows(validated: DataFrame, contract: SourceContract, bronze_version: int) -> DataFrame:
    return validated.where(F.col("_reason_code").isNotNull()).select(
        F.lit(contract.source).alias("source"),
        "event_id",
        "event_type",
        F.col("_reason_code").alias("reason_code"),
        F.col("_reason").alias("reason"),
        F.col("_details").alias("details"),
        "raw_line",
        F.col("_file").alias("file_path"),
        F.col("_ingest_ts").alias("ingest_ts"),
        F.lit(contract.latest_version).cast("int").alias("contract_version"),
        F.lit(bronze_version).cast("bigint").alias("bronze_version"),
    )


def drift_rows(validated: DataFrame, contract: SourceContract, bronze_version: int) -> DataFrame:
    """Unknown fields per source and field in this batch: count, first/last seen, an example."""
    exploded = validated.where(F.size("_unknown_fields") > 0).select(
        F.explode("_unknown_fields").alias("field"), "event_id", "event_type", "_ingest_ts")
    return exploded.groupBy("field").agg(
        F.count(F.lit(1)).alias("events"),
        F.min("_ingest_ts").alias("first_seen"),
        F.max("_ingest_ts").alias("last_seen"),
        F.min("event_id").alias("example_event_id"),
        F.array_sort(F.collect_set("event_type")).alias("event_types"),
    ).select(
        F.lit(contract.source).alias("source"), "field", "events", "first_seen", "last_seen",
        "example_event_id", "event_types",
        F.lit(contract.latest_version).cast("int").alias("contract_version"),
        F.lit(bronze_version).cast("bigint").alias("bronze_version"),
    )


@dataclass
class SilverResult:
    source: str
    bronze_version: int | None = None
    valid: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.bronze_version is None


def refresh_silver(
    spark: SparkSession, lake: Lake, contract: SourceContract, rules: ValidationRules
) -> SilverResult:
    """Validate the bronze rows appended since the last refresh and commit them exactly once."""
    source = contract.source
    bronze, silver = f"bronze.{source}", silver_table(contract)
    app_ids = {
        silver: f"{silver}<-{bronze}",
        QUARANTINE: f"{QUARANTINE}<-{bronze}",
        DRIFT: f"{DRIFT}<-{bronze}",
    }
    if not lake.exists(bronze):
        return SilverResult(source)
    done = {t: lake.committed(t, app) for t, app in app_ids.items()}
    since = done[silver]
    # A crash after quarantine/drift committed but before silver did: finish exactly that range.
    ahead = [v for t, v in done.items() if t != silver and v is not None and (since is None or v > since)]
    until = max(ahead) if ahead else None
    changes = lake.changes(spark, bronze, since, until)
    if since is not None and changes.to_version <= since:
        return SilverResult(source)
    known_ids = lake.read_spark(spark, silver, ["event_id"]) if lake.exists(silver) else None
    validated = validate_events(changes.frame, contract, rules, known_ids).persist()
    try:
        target = changes.to_version
        good = validated.where(F.col("_reason_code").isNull()).select(*silver_columns(contract))
        bad = quarantine_rows(validated, contract, target)
        drift = drift_rows(validated, contract, target)
        good_rows, bad_rows, drift_table = good.toArrow(), bad.toArrow(), drift.toArrow()
    finally:
        validated.unpersist()
    meta = {"bronze_version": str(target)}
    lake.append(QUARANTINE, _compact(bad_rows), app_id=app_ids[QUARANTINE], txn_version=target,
                stage=f"silver.{source}", metadata=meta)
    lake.append(DRIFT, drift_table, app_id=app_ids[DRIFT], txn_version=target,
                stage=f"silver.{source}", metadata=meta)
    # Silver last: its app transaction is the watermark of what has been consumed.
    lake.append(silver, good_rows, app_id=app_ids[silver], txn_version=target,
                stage=f"silver.{source}", metadata=meta)
    reasons: dict[str, int] = {}
    for code in bad_rows.column("reason_code").to_pylist():
        reasons[code] = reasons.get(code, 0) + 1
    drift_counts = dict(zip(drift_table.column("field").to_pylist(),
                            drift_table.column("events").to_pylist(), strict=True))
    return SilverResult(source, target, good_rows.num_rows, reasons, drift_counts)


def _compact(table: pa.Table) -> pa.Table:
    return table.combine_chunks() if table.num_rows else table
