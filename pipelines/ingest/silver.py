"""Silver: bronze lines parsed, typed and validated against the source's contract.

`validate_events` is the pure transform: every bronze line comes out once, either typed (no reason)
or with the reason a steward reads (`missing field msisdn`, `amount: expected decimal, got "abc"`).
`refresh_silver` is the driver: it reads the bronze rows appended since the last run, writes
valid events to `silver.<domain>`, the rest to `silver.quarantine` and unknown fields to
`silver.schema_drift`, each commit keyed by the bronze version it consumed, so a rerun after a
crash adds nothing twice.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import (
    ENVELOPE_FIELDS,
    FieldSpec,
    IdentityCfg,
    Settings,
    SourceContract,
)
from pipelines.lakehouse.catalog import (
    DRIFT,
    QUARANTINE,
    REJECTED,
    bronze_table,
    refined_from,
    silver_table,
)
from pipelines.lakehouse.lake import Lake

# Identifier fields rejected alone (a junk email on a good login): the line itself is valid.
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Columns silver adds to the contract's fields (lineage back to bronze).
LINEAGE = ("_ingest_ts", "_file", "_unknown_fields")
# Identifies a bronze line: ingest order is (ingest_ts, batch_id, line_id).
LINE_KEY = ("ingest_ts", "batch_id", "line_id")
# The same key in a validated batch.
LINE_COLUMNS = ("_ingest_ts", "_batch_id", "_line_id")


@dataclass(frozen=True)
class ValidationRules:
    """What silver needs besides the contract: identifier rules, the future-time tolerance and
    the longest line parsed."""

    identity: IdentityCfg
    max_future_skew_minutes: int
    max_line_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationRules:
        engine = settings.engine
        return cls(settings.identity, engine.max_future_skew_minutes, engine.max_line_bytes)


def _shown(v: Column) -> Column:
    """A value quoted for a reason message, cut short so a huge field cannot bloat quarantine."""
    return F.concat(F.lit('"'), F.substring(v, 1, 40), F.lit('"'))


@dataclass(frozen=True)
class Check:
    """One contract rule: the reason code, when a line breaks it, and what the steward reads."""

    code: str
    fails: Column
    message: Column


def _check(code: str, fails: Column, message: Column | str) -> Check:
    return Check(code, fails, F.lit(message) if isinstance(message, str) else message)


def _all_digits(s: Column) -> Column:
    # translate() strips characters without a regex: several times cheaper per row.
    return (F.length(s) > 0) & (F.translate(s, "0123456789", "") == "")


def normalise_msisdn(v: Column, rules: ValidationRules) -> Column:
    """Digits only, international form: `+998 90 123-45-67`, `0090…` and `901234567` agree."""
    c = rules.identity.country
    digits = F.translate(v, " -().+", "")
    n = c.national_number_length
    return (
        F.when(F.length(digits) == n, F.concat(F.lit(c.calling_code), digits))
        .when(
            (F.length(digits) == n + 1) & digits.startswith("0"),
            F.concat(F.lit(c.calling_code), F.substring(digits, 2, 64)),
        )
        .when(digits.startswith("00"), F.substring(digits, 3, 64))
        .otherwise(digits)
    )


def typed_value(v: Column, spec: FieldSpec, rules: ValidationRules) -> Column:
    """The field's value in its silver type, or null when the text does not fit the type.

    Checks avoid regular expressions on the hot types (numbers, MSISDN, timestamps): they run on
    every line of every batch, and a regex costs several times a cast.
    """
    s = F.trim(v)
    t = spec.type
    if t in ("integer", "decimal", "double"):
        return s.try_cast(spec.storage_type())
    if t == "boolean":
        return F.when(F.lower(s).isin("true", "false"), F.lower(s) == "true")
    if t == "timestamp":
        # Spark's cast also accepts words ("yesterday", "now") and local times: insist on a
        # date part and an explicit offset.
        dated = (F.substring(s, 5, 1) == "-") & (F.substring(s, 11, 1).isin("T", " "))
        offset = s.endswith("Z") | F.substring(s, -6, 1).isin("+", "-")
        return F.when(dated & offset, s.try_cast("timestamp"))
    if t == "date":
        return F.when(F.length(s) == 10, s.try_cast("date"))
    if t == "msisdn":
        n = normalise_msisdn(s, rules)
        e164 = _all_digits(n) & F.length(n).between(8, 15) & ~n.startswith("0")
        return F.when(e164, n)
    if t == "iccid":
        return F.when(s.startswith("89") & F.length(s).between(18, 22) & _all_digits(s), s)
    if t == "email":
        n = F.lower(s)
        return F.when(n.rlike(EMAIL), n)
    if t == "enum":
        return F.when(s.isin(*(spec.values or [])), s)
    return s


TYPE_WORDS = {
    "integer": "integer",
    "decimal": "decimal",
    "double": "number",
    "boolean": "true or false",
    "timestamp": "ISO-8601 timestamp with offset",
    "date": "date YYYY-MM-DD",
    "msisdn": "MSISDN (E.164 digits)",
    "iccid": "ICCID (89 + 16-20 digits)",
    "email": "e-mail address",
    "string": "string",
}


def _id_type(name: str, spec: FieldSpec) -> str | None:
    if spec.type in ("msisdn", "email", "iccid"):
        return spec.type
    return name if name in ("passport", "app_user_id", "account_id") else None


def _junk_type(name: str, spec: FieldSpec, rules: ValidationRules) -> str | None:
    """The identifier type whose junk rules apply to this field, if it has any."""
    id_type = _id_type(name, spec)
    junk = rules.identity.junk
    has_rules = id_type and (junk.values.get(id_type) or junk.patterns.get(id_type))
    return id_type if has_rules else None


def _is_junk(raw: Column, value: Column, id_type: str, rules: ValidationRules) -> Column:
    junk = rules.identity.junk
    values = junk.values.get(id_type, [])
    patterns = junk.patterns.get(id_type, [])
    trimmed = F.trim(raw)
    subject = F.coalesce(value, trimmed)
    cond = (trimmed.isin(*values) | subject.isin(*values)) if values else F.lit(False)
    for p in patterns:
        cond = cond | subject.rlike(p)
    return cond


@dataclass(frozen=True)
class _ContractIndex:
    """The contract's (version, event type) pairs numbered in order, each with its known keys,
    and the pairs where each field is allowed or required: per-line rules compare one small
    integer instead of strings."""

    pairs: list[tuple[int, str]]
    keys: list[list[str]]
    required_in: dict[str, list[int]]
    allowed_in: dict[str, list[int]]

    @classmethod
    def of(cls, contract: SourceContract) -> _ContractIndex:
        fields = contract.silver_fields()
        pairs: list[tuple[int, str]] = []
        keys: list[list[str]] = []
        required_in: dict[str, list[int]] = {name: [] for name in fields}
        allowed_in: dict[str, list[int]] = {name: [] for name in fields}
        for v in contract.active_versions():
            for t, spec in v.event_types.items():
                pair = len(pairs)
                pairs.append((v.version, t))
                keys.append([*ENVELOPE_FIELDS, *spec.fields])
                for name, fs in spec.fields.items():
                    allowed_in[name].append(pair)
                    if fs.required:
                        required_in[name].append(pair)
        return cls(pairs, keys, required_in, allowed_in)

    def pair_of(self, version: Column, event_type: Column) -> Column:
        """The pair's number, null when the version or the event type is not in the contract."""
        by_version: dict[int, Column] = {}
        for i, (v, t) in enumerate(self.pairs):
            inner = by_version.get(v)
            by_version[v] = (F if inner is None else inner).when(event_type == t, F.lit(i))
        out: Column | None = None
        for v, inner in by_version.items():
            out = (F if out is None else out).when(version == v, inner)
        return out if out is not None else F.lit(None).cast("int")

    def allowed(self, name: str, pair: Column) -> Column:
        return pair.isin(*self.allowed_in[name]) if self.allowed_in[name] else F.lit(False)

    def required(self, name: str, pair: Column) -> Column:
        return pair.isin(*self.required_in[name]) if self.required_in[name] else F.lit(False)

    def known_keys(self, pair: Column) -> Column:
        """The keys a line of this pair may carry (null for an unknown pair).

        A CASE, not `element_at(array, pair + 1)`: with whole-stage code generation Spark
        evaluated that index for a null pair as 0 and failed the batch."""
        out: Column | None = None
        for i, ks in enumerate(self.keys):
            out = (F if out is None else out).when(pair == i, F.array(*map(F.lit, ks)))
        return out if out is not None else F.lit(None).cast("array<string>")


def _raw(name: str) -> str:
    return f"_raw_{name}"


def _typed(name: str) -> str:
    return f"_typed_{name}"


def _field_columns(
    name: str, spec: FieldSpec, index: _ContractIndex, rules: ValidationRules
) -> list[Column]:
    """Per-field facts computed once per line: typed value, present, allowed, required, junk."""
    raw, pair = F.col(_raw(name)), F.col("_pair")
    value = typed_value(raw, spec, rules)
    cols = [
        value.alias(_typed(name)),
        (raw.isNotNull() & (F.trim(raw) != "")).alias(f"_present_{name}"),
        index.allowed(name, pair).alias(f"_allowed_{name}"),
        index.required(name, pair).alias(f"_required_{name}"),
    ]
    id_type = _junk_type(name, spec, rules)
    if id_type:
        cols.append(_is_junk(raw, value, id_type, rules).alias(f"_junk_{name}"))
    return cols


def _junk_message(name: str) -> Column:
    return F.concat(F.lit(f"{name}: junk identifier "), _shown(F.col(_raw(name))))


def _type_message(name: str, spec: FieldSpec) -> Column:
    expected = TYPE_WORDS.get(spec.type) or f"one of {', '.join(spec.values or [])}"
    return F.concat(F.lit(f"{name}: expected {expected}, got "), _shown(F.col(_raw(name))))


def _field_checks(name: str, spec: FieldSpec, rules: ValidationRules) -> list[Check]:
    """Checks of one payload field, over the facts `_field_columns` computed. A bad value of an
    identifier field the event type does not require is not the line's fault: it is rejected
    alone (`_rejected_fields`) and the line's other fields still count."""
    value = F.col(_typed(name))
    present, allowed = F.col(f"_present_{name}"), F.col(f"_allowed_{name}")
    required = F.col(f"_required_{name}")
    checks = [_check("missing_field", required & ~present, f"missing field {name}")]
    # Identifier fields break the line only where the event type requires them.
    breaks = required if _id_type(name, spec) else allowed
    if _junk_type(name, spec, rules):
        # Before the type check: "junk identifier" tells the steward more than "not an MSISDN".
        junk = breaks & present & F.col(f"_junk_{name}")
        checks.append(_check("junk_identifier", junk, _junk_message(name)))
    checks.append(
        _check("wrong_type", breaks & present & value.isNull(), _type_message(name, spec))
    )
    return checks


def _rejected_field_columns(contract: SourceContract, rules: ValidationRules) -> list[Column]:
    """`_bad_<field>` per identifier field: its value is junk or not of its type where the event
    type allows but does not require it (the field is dropped, the line kept)."""
    cols = []
    for name, spec in contract.silver_fields().items():
        if not _id_type(name, spec):
            continue
        bad = F.col(_typed(name)).isNull()
        if _junk_type(name, spec, rules):
            bad = bad | F.col(f"_junk_{name}")
        optional = F.col(f"_allowed_{name}") & ~F.col(f"_required_{name}")
        cols.append((optional & F.col(f"_present_{name}") & bad).alias(f"_bad_{name}"))
    return cols


def _rejected_fields(contract: SourceContract, rules: ValidationRules) -> Column:
    """The identifier fields of a line rejected alone, each with its reason (null: none)."""
    parts = []
    for name, spec in contract.silver_fields().items():
        if not _id_type(name, spec):
            continue
        junk = F.col(f"_junk_{name}") if _junk_type(name, spec, rules) else F.lit(False)
        code = F.when(junk, F.lit("junk_identifier")).otherwise(F.lit("wrong_type"))
        message = F.when(junk, _junk_message(name)).otherwise(_type_message(name, spec))
        parts.append(
            (
                F.col(f"_bad_{name}"),
                F.struct(
                    F.lit(name).alias("field"), code.alias("reason_code"), message.alias("reason")
                ),
            )
        )
    if not parts:
        return F.lit(None).cast("array<struct<field:string,reason_code:string,reason:string>>")
    any_bad = parts[0][0]
    for bad, _ in parts[1:]:
        any_bad = any_bad | bad
    found = F.filter(F.array(*[F.when(bad, row) for bad, row in parts]), lambda x: x.isNotNull())
    return F.when(any_bad, found)


Stage = list["Column | str"]


def _check_stages(contract: SourceContract, rules: ValidationRules, explain: bool) -> list[Stage]:
    """The projections that parse each line and find the first contract rule it breaks
    (`_reason`, null when valid; with `explain`, also the steward's wording of every rule
    broken).

    The work is staged in separate projections (raw values, typed values, then one CASE over the
    rules) so each field is parsed once and rules stop at the first failure; messages and the
    full list of breaches are only built for the few lines that fail.
    """
    fields = contract.silver_fields()
    index = _ContractIndex.of(contract)
    known_versions = sorted(v.version for v in contract.active_versions())

    m = F.col("_m")
    oversized = F.octet_length("raw_line") > rules.max_line_bytes
    parsed: Stage = [
        *LINE_KEY,
        "raw_line",
        "file_path",
        oversized.alias("_oversized"),
        # an oversized line is not parsed at all (a producer's runaway message costs nothing)
        F.when(~oversized, F.from_json("raw_line", "map<string,string>")).alias("_m"),
    ]
    version = F.trim(m["schema_version"]).try_cast("int")
    pair = index.pair_of(version, m["event_type"])
    # Drift: only a line with more keys than its pair's fields present can carry an unknown
    # one, so the set difference runs on those lines alone.
    present = [F.when(m[f].isNotNull(), 1).otherwise(0) for f in ENVELOPE_FIELDS] + [
        F.when(m[f].isNotNull() & index.allowed(f, pair), 1).otherwise(0) for f in fields
    ]
    env: Stage = [
        *LINE_KEY,
        "raw_line",
        "file_path",
        "_oversized",
        m.isNull().alias("_bad_json"),
        *[m[f].alias(_raw(f)) for f in (*ENVELOPE_FIELDS, *fields)],
        version.alias("_version"),
        pair.alias("_pair"),
        # Judged only where the version and event type are known; otherwise nothing is "unknown".
        F.when(
            F.size(m) > sum(present[1:], present[0]),
            F.array_sort(F.array_except(F.map_keys(m), index.known_keys(pair))),
        )
        .otherwise(F.when(pair.isNotNull(), F.array().cast("array<string>")))
        .alias("_unknown_fields"),
    ]
    envelope: Stage = [
        "*",
        event_id_of(
            F.col(_raw("event_id")), F.col("_bad_json"), F.col("raw_line"), F.col("_oversized")
        ).alias("_event_id"),
        typed_value(F.col(_raw("event_ts")), FieldSpec(type="timestamp"), rules).alias("_event_ts"),
    ]
    typed: Stage = [
        "*",
        *[c for f, spec in fields.items() for c in _field_columns(f, spec, index, rules)],
    ]

    raw = {f: F.col(_raw(f)) for f in ENVELOPE_FIELDS}
    event_ts, ver = F.col("_event_ts"), F.col("_version")
    known_types = ", ".join(sorted({t for _, t in index.pairs}))
    checks = [
        _check(
            "oversized",
            F.col("_oversized"),
            F.concat(
                F.lit("line of "),
                F.octet_length("raw_line").cast("string"),
                F.lit(f" bytes; at most {rules.max_line_bytes} are read (engine.max_line_bytes)"),
            ),
        ),
        _check(
            "bad_json",
            F.col("_bad_json"),
            F.concat(F.lit("not a JSON object: "), _shown(F.col("raw_line"))),
        ),
        _check(
            "missing_field",
            F.coalesce(F.col("_event_id"), F.lit("")) == "",
            "missing field event_id",
        ),
        _check("missing_field", raw["source"].isNull(), "missing field source"),
        _check(
            "wrong_source",
            raw["source"] != contract.source,
            F.concat(F.lit(f'source: expected "{contract.source}", got '), _shown(raw["source"])),
        ),
        _check("missing_field", raw["schema_version"].isNull(), "missing field schema_version"),
        _check(
            "unknown_schema_version",
            ~F.coalesce(ver.isin(*known_versions), F.lit(False)),
            F.concat(
                F.lit("schema_version "),
                _shown(raw["schema_version"]),
                F.lit(
                    f" is not an active version of the {contract.source} contract "
                    f"(active: {', '.join(map(str, known_versions))})"
                ),
            ),
        ),
        _check("missing_field", raw["event_type"].isNull(), "missing field event_type"),
        _check(
            "unknown_event_type",
            F.col("_pair").isNull(),
            F.concat(
                F.lit("event_type "),
                _shown(raw["event_type"]),
                F.lit(f" is not in the {contract.source} contract v"),
                ver.cast("string"),
                F.lit(f" (known: {known_types})"),
            ),
        ),
        _check("missing_field", raw["event_ts"].isNull(), "missing field event_ts"),
        _check(
            "wrong_type",
            event_ts.isNull(),
            F.concat(
                F.lit("event_ts: expected ISO-8601 timestamp with offset, got "),
                _shown(raw["event_ts"]),
            ),
        ),
        *[c for name, spec in fields.items() for c in _field_checks(name, spec, rules)],
        _check(
            "future_event_time",
            event_ts
            > F.col("ingest_ts") + F.expr(f"INTERVAL {rules.max_future_skew_minutes} MINUTES"),
            F.concat(
                F.lit("event_ts "),
                _shown(raw["event_ts"]),
                F.lit(f" is more than {rules.max_future_skew_minutes} min after ingest time"),
            ),
        ),
    ]
    first = F.when(checks[0].fails, F.lit(0))
    for i, c in enumerate(checks[1:], start=1):
        first = first.when(c.fails, F.lit(i))
    idx = F.col("_first_check")
    message = F.when(idx == 0, checks[0].message)
    for i, c in enumerate(checks[1:], start=1):
        message = message.when(idx == i, c.message)
    # After an oversized line or bad JSON no other rule applies; otherwise list every rule the
    # line breaks.
    details = (
        F.when(idx == 0, checks[0].message)
        .when(idx == 1, checks[1].message)
        .otherwise(F.concat_ws("; ", *[F.when(c.fails, c.message) for c in checks[2:]]))
    )
    if not explain:
        message = details = F.lit(None).cast("string")
    reason = F.when(
        idx.isNotNull(),
        F.struct(
            F.element_at(F.array(*[F.lit(c.code) for c in checks]), idx + 1).alias("code"),
            message.alias("message"),
            details.alias("details"),
        ),
    )
    return [
        parsed,
        env,
        envelope,
        typed,
        ["*", first.alias("_first_check"), *_rejected_field_columns(contract, rules)],
        ["*", reason.alias("_reason")],
    ]


def event_id_of(parsed_id: Column, bad_json: Column, raw_line: Column, oversized: Column) -> Column:
    """The line's event id; for a line that is not a JSON object, whatever id can be read
    before it breaks, so the steward can still tell which event it was; for an oversized line
    (never parsed) an `"event_id": "..."` near its start."""
    near_start = F.regexp_extract(
        F.substring(raw_line, 1, 4096), r'"event_id"\s*:\s*"([^"]{1,200})"', 1
    )
    unparsed = F.when(oversized, F.nullif(near_start, F.lit(""))).otherwise(
        F.get_json_object(raw_line, "$.event_id")
    )
    return F.trim(F.when(bad_json, unparsed).otherwise(parsed_id))


def _shape(contract: SourceContract, rules: ValidationRules) -> Stage:
    """Final columns: typed silver fields (a field rejected alone is null), lineage, the reason
    (null when valid), the fields rejected alone, the line's key and raw line."""
    fields = contract.silver_fields()
    index = _ContractIndex.of(contract)
    pair = F.col("_pair")

    def kept(w: str) -> Column:
        typed = F.col(_typed(w))
        return F.when(~F.col(f"_bad_{w}"), typed) if _id_type(w, fields[w]) else typed

    payload = [
        F.coalesce(
            *[F.when(index.allowed(w, pair), kept(w)) for w in wires],
        )
        .cast(fields[wires[0]].storage_type())
        .alias(column)
        for column, wires in contract.silver_columns().items()
    ]
    reason = F.col("_reason")
    return [
        F.col("_event_id").alias("event_id"),
        F.col(_raw("source")).alias("source"),
        F.col(_raw("event_type")).alias("event_type"),
        F.col("_event_ts").alias("event_ts"),
        F.col("_version").alias("schema_version"),
        *payload,
        F.col("ingest_ts").alias("_ingest_ts"),
        F.col("file_path").alias("_file"),
        "_unknown_fields",
        reason["code"].alias("_reason_code"),
        reason["message"].alias("_reason"),
        F.when(reason["details"] != reason["message"], reason["details"]).alias("_details"),
        _rejected_fields(contract, rules).alias("_rejected_fields"),
        F.col("batch_id").alias("_batch_id"),
        F.col("line_id").alias("_line_id"),
        "raw_line",
    ]


_STAGES: dict[tuple[str, str, str, bool], list[Stage]] = {}


def _validation_stages(
    contract: SourceContract, rules: ValidationRules, spark: SparkSession, explain: bool
) -> list[Stage]:
    """Every projection of the validation, built once per contract, rules and Spark application:
    building them costs thousands of Py4J calls (about a second per source), more than running
    them on a small micro-batch."""
    key = (contract.model_dump_json(), repr(rules), spark.sparkContext.applicationId, explain)
    stages = _STAGES.get(key)
    if stages is None:
        if len(_STAGES) > 64:
            _STAGES.clear()
        stages = [*_check_stages(contract, rules, explain), _shape(contract, rules)]
        _STAGES[key] = stages
    return stages


def validate_events(
    bronze: DataFrame, contract: SourceContract, rules: ValidationRules, *, explain: bool = True
) -> DataFrame:
    """Parse and check every bronze line; one row per line with the silver columns plus
    `_reason_code`, `_reason`, `_details` (null when valid), `_unknown_fields`, the line's key
    and `raw_line`. Without `explain` the reason's wording (`_reason`, `_details`) is left null.

    `bronze` has the bronze columns (`raw_line`, `file_path`, `ingest_ts`, `batch_id`,
    `line_id`). Duplicate event ids are not judged here: that needs every line of the batch and
    the ids silver holds, and is done once the batch is collected (`mark_duplicates`).
    """
    frame = bronze
    for stage in _validation_stages(contract, rules, bronze.sparkSession, explain):
        frame = frame.select(*stage)
    return frame


def bronze_frame(checked: DataFrame, source: str) -> DataFrame:
    """The bronze table's rows out of a checked batch: raw line, the event id silver read, and
    the ingest metadata (what bronze stores, and what the wording pass re-reads)."""
    return checked.select(
        "raw_line",
        "event_id",
        F.lit(source).alias("source"),
        F.col("_file").alias("file_path"),
        F.col("_ingest_ts").alias("ingest_ts"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_line_id").alias("line_id"),
    )


def check_lines(bronze: DataFrame, contract: SourceContract, rules: ValidationRules) -> DataFrame:
    """Every bronze line parsed and checked, kept on the executors for the batch's writes.

    The reasons are coded but not worded here: the wording (about thirty message expressions
    and the list of every rule broken) cost a quarter of the pass when every line paid for it,
    so `_worded` words the rejected lines alone in a second pass.
    """
    return validate_events(bronze, contract, rules, explain=False).persist(
        StorageLevel.MEMORY_AND_DISK
    )


def _worded(checked: DataFrame, contract: SourceContract, rules: ValidationRules) -> DataFrame:
    """The rejected lines of a checked batch with their reasons worded for the steward."""
    rejected = checked.where(F.col("_reason_code").isNotNull())
    return validate_events(bronze_frame(rejected, contract.source), contract, rules)


def silver_columns(contract: SourceContract) -> list[str]:
    return [*ENVELOPE_FIELDS, *contract.silver_columns(), *LINEAGE]


def _judged(
    checked: DataFrame, lake: Lake, contract: SourceContract
) -> tuple[DataFrame, list[DataFrame]]:
    """The valid lines with `_duplicate` set: the reason a line is a duplicate (null if not),
    and the small frames persisted to say so (the caller unpersists them).

    A valid line is a duplicate when silver already holds its event id, or an earlier valid line
    of the batch carried it: the first by ingest time, batch and line wins, so a broken line the
    source resends corrected under the same id is not lost. Ids are first compared by a 64-bit
    hash (a cheap aggregate over every line); only the lines whose hash repeats or that silver
    holds are judged by the id itself and joined back, so a batch without duplicates joins a
    handful of rows.
    """
    line = F.struct(*LINE_COLUMNS)
    valid = checked.where(F.col("_reason_code").isNull()).withColumn("_h", F.xxhash64("event_id"))
    suspects = valid.groupBy("_h").count().where("count > 1").select("_h")
    silver = silver_table(contract)
    held: DataFrame | None = None
    if lake.exists(silver):
        held = (
            lake.read_spark(checked.sparkSession, silver, ["event_id"])
            .withColumn("_h", F.xxhash64("event_id"))
            .join(valid.select("_h"), "_h", "left_semi")
            .select("event_id")
            .distinct()
            .persist(StorageLevel.MEMORY_AND_DISK)  # joined twice: silver is scanned once
        )
        suspects = suspects.unionByName(held.select(F.xxhash64("event_id").alias("_h")))
    ids = valid.join(suspects.distinct(), "_h", "left_semi").select("event_id", line.alias("_line"))
    marks = (
        ids.groupBy("event_id")
        .agg(F.count(F.lit(1)).alias("_n"), F.min("_line").alias("_first"))
        .select("event_id", F.when(F.col("_n") > 1, F.col("_first")).alias("_first"))
    )
    if held is not None:
        marks = marks.join(held.withColumn("_held", F.lit(True)), "event_id", "left")
    else:
        marks = marks.withColumn("_held", F.lit(None).cast("boolean"))
    shown = F.concat(F.lit('duplicate event_id "'), F.substring("event_id", 1, 40), F.lit('"'))
    why = F.when(F.col("_held"), F.concat(shown, F.lit(" (already in silver)"))).when(
        F.col("_first").isNotNull() & (line != F.col("_first")),
        F.concat(shown, F.lit(" (repeated earlier in this batch)")),
    )
    # The marks are small and three writes join them: computed once, kept on the executors.
    marks = marks.persist(StorageLevel.MEMORY_AND_DISK)
    judged = valid.drop("_h").join(marks, "event_id", "left").withColumn("_duplicate", why)
    return judged, [marks] if held is None else [marks, held]


def _stamped(rows: DataFrame, contract: SourceContract, bronze_version: int) -> DataFrame:
    """A quarantine, drift or rejected-fields frame: source first, then `rows`' columns, then
    contract and bronze versions, so every row says which contract judged it and which bronze
    range it came from."""
    return rows.select(
        F.lit(contract.source).alias("source"),
        "*",
        F.lit(contract.latest_version).cast("int").alias("contract_version"),
        F.lit(bronze_version).cast("bigint").alias("bronze_version"),
    )


def _quarantine(
    worded: DataFrame, duplicates: DataFrame, contract: SourceContract, bronze_version: int
) -> DataFrame:
    """Rejected lines with their worded reasons, and the duplicates, as quarantine rows."""

    def rows(frame: DataFrame, code: Column, reason: Column, details: Column) -> DataFrame:
        return frame.select(
            "event_id",
            "event_type",
            code.alias("reason_code"),
            reason.alias("reason"),
            details.alias("details"),
            "raw_line",
            F.col("_file").alias("file_path"),
            F.col("_ingest_ts").alias("ingest_ts"),
        )

    bad = rows(worded, F.col("_reason_code"), F.col("_reason"), F.col("_details"))
    dup = rows(duplicates, F.lit("duplicate"), F.col("_duplicate"), F.lit(None).cast("string"))
    return _stamped(bad.unionByName(dup), contract, bronze_version)


def _rejected(kept: DataFrame, contract: SourceContract, bronze_version: int) -> DataFrame:
    """One row per identifier field rejected alone on a line that reached silver."""
    rows = kept.select(
        "event_id",
        "event_type",
        F.explode("_rejected_fields").alias("_f"),
        F.col("_ingest_ts").alias("ingest_ts"),
    )
    return _stamped(
        rows.select(
            "event_id",
            "event_type",
            F.col("_f.field").alias("field"),
            F.col("_f.reason_code").alias("reason_code"),
            F.col("_f.reason").alias("reason"),
            "ingest_ts",
        ),
        contract,
        bronze_version,
    )


def _drift(checked: DataFrame, contract: SourceContract, bronze_version: int) -> DataFrame:
    """Unknown fields of this batch per field: events, first/last seen, an example event id."""
    exploded = checked.select(
        F.explode("_unknown_fields").alias("field"), "event_id", "event_type", "_ingest_ts"
    )
    agg = exploded.groupBy("field").agg(
        F.count(F.lit(1)).alias("events"),
        F.min("_ingest_ts").alias("first_seen"),
        F.max("_ingest_ts").alias("last_seen"),
        F.min("event_id").alias("example_event_id"),
        F.array_sort(F.collect_set("event_type")).alias("event_types"),
    )
    return _stamped(agg, contract, bronze_version)


@dataclass
class SilverResult:
    source: str
    bronze_version: int | None = None
    valid: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)
    rejected_fields: dict[str, int] = field(default_factory=dict)  # field -> values rejected

    @property
    def skipped(self) -> bool:
        return self.bronze_version is None


def _app_ids(contract: SourceContract) -> dict[str, str]:
    """The app transaction of each silver-side table: its watermark of the bronze consumed."""
    tables = (silver_table(contract), QUARANTINE, DRIFT, REJECTED)
    return {t: refined_from(t, contract.source) for t in tables}


def silver_watermark(lake: Lake, contract: SourceContract) -> int | None:
    """The last bronze version whose rows silver holds (None: none yet)."""
    silver = silver_table(contract)
    return lake.committed(silver, _app_ids(contract)[silver])


def refresh_silver(
    spark: SparkSession, lake: Lake, contract: SourceContract, rules: ValidationRules
) -> SilverResult:
    """Validate the bronze rows appended since the last refresh and commit them exactly once."""
    source = contract.source
    bronze, silver = bronze_table(source), silver_table(contract)
    if not lake.exists(bronze):
        return SilverResult(source)
    done = {t: lake.committed(t, app) for t, app in _app_ids(contract).items()}
    since = done[silver]
    # A crash after quarantine/drift committed but before silver did: finish exactly that range.
    ahead = [
        v for t, v in done.items() if t != silver and v is not None and (since is None or v > since)
    ]
    changes = lake.changes(spark, bronze, since, max(ahead) if ahead else None)
    if since is not None and changes.to_version <= since:
        return SilverResult(source)
    checked = check_lines(changes.frame, contract, rules)
    try:
        return commit_silver(lake, contract, rules, checked, changes.to_version)
    finally:
        checked.unpersist()


def _counts(checked: DataFrame) -> dict[str, int]:
    """Lines of a checked batch with unknown fields (`drift`) and valid lines with identifier
    fields rejected alone (`rejected`): one small aggregate, to skip empty commits."""
    row = checked.select(
        F.count(F.when(F.size("_unknown_fields") > 0, 1)).alias("drift"),
        F.count(
            F.when(F.col("_reason_code").isNull() & F.col("_rejected_fields").isNotNull(), 1)
        ).alias("rejected"),
    ).first()
    assert row is not None
    return row.asDict()


def _append_outputs(
    lake: Lake,
    contract: SourceContract,
    rules: ValidationRules,
    bronze_version: int,
    judged: DataFrame,
    side: DataFrame,
    app_ids: dict[str, str],
) -> dict[str, int | None]:
    """Append quarantine, drift, rejected fields and silver (last: its app transaction is the
    watermark of what has been consumed); returns each written table's version before."""
    silver = silver_table(contract)
    counts = _counts(side)
    duplicate = F.col("_duplicate").isNotNull()
    dup_lines = judged.where(duplicate).select(*LINE_COLUMNS)
    kept_side = side.where(
        F.col("_reason_code").isNull() & F.col("_rejected_fields").isNotNull()
    ).join(dup_lines, list(LINE_COLUMNS), "left_anti")
    outputs = [
        (
            QUARANTINE,
            _quarantine(
                _worded(side, contract, rules), judged.where(duplicate), contract, bronze_version
            ),
            True,
        ),
        # Drift and rejected fields are rare: an empty batch of them is not worth a commit once
        # the table exists (their watermarks only ever tell a crash apart from a finished batch).
        (DRIFT, _drift(side, contract, bronze_version), counts["drift"] > 0),
        (REJECTED, _rejected(kept_side, contract, bronze_version), counts["rejected"] > 0),
        (silver, judged.where(~duplicate).select(silver_columns(contract)), True),
    ]
    meta = {"bronze_version": str(bronze_version)}
    stage = f"silver.{contract.source}"
    written: dict[str, int | None] = {}
    for table, rows, needed in outputs:
        before = lake.version(table)
        if (needed or before is None) and lake.append(
            table,
            rows,
            app_id=app_ids[table],
            txn_version=bronze_version,
            stage=stage,
            metadata=meta,
        ):
            written[table] = before
    return written


def commit_silver(
    lake: Lake,
    contract: SourceContract,
    rules: ValidationRules,
    checked: DataFrame,
    bronze_version: int,
) -> SilverResult:
    """Judge duplicates in a checked batch (all bronze rows up to `bronze_version` that silver
    has not consumed), then append quarantine, drift, rejected fields and silver, each once for
    that version. Everything stays on the executors; the driver reads back the small tables'
    new rows to report counts."""
    silver = silver_table(contract)
    app_ids = _app_ids(contract)
    judged, persisted = _judged(checked, lake, contract)
    # The few lines the small tables come from, so their writes do not re-scan the batch.
    side = checked.where(
        F.col("_reason_code").isNotNull()
        | (F.size("_unknown_fields") > 0)
        | F.col("_rejected_fields").isNotNull()
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        written = _append_outputs(lake, contract, rules, bronze_version, judged, side, app_ids)
    finally:
        for frame in (side, *persisted):
            frame.unpersist()
    silver_version = lake.version(silver)
    assert silver_version is not None
    return SilverResult(
        contract.source,
        bronze_version,
        lake.rows_written(silver, silver_version) if silver in written else 0,
        _tally(lake, written, QUARANTINE, "reason_code"),
        _tally(lake, written, DRIFT, "field", "events"),
        _tally(lake, written, REJECTED, "field"),
    )


def _tally(
    lake: Lake, written: dict[str, int | None], table: str, key: str, weight: str | None = None
) -> dict[str, int]:
    """Per `key`, the rows (or the sum of `weight`) this batch's commit added to `table`: read
    back from the commit, these tables are small."""
    if table not in written:
        return {}
    version = lake.version(table)
    assert version is not None
    columns = [key] if weight is None else [key, weight]
    out: collections.Counter[str] = collections.Counter()
    for r in lake.appended(table, written[table], version, columns).to_pylist():
        out[r[key]] += 1 if weight is None else r[weight]
    return dict(out)
