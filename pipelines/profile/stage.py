"""Gold driver: silver events + identity -> daily usage, facts, gold.profiles and the outbox.

`refresh_gold` runs after each identity refresh (beside ingestion). It reads the silver rows
added since its watermark, attributes them to identity nodes, appends their daily counters and
facts, and rebuilds the profiles of the persons the batch touched: persons of the events' nodes,
persons whose identifiers moved (merges, splits, new identifiers) and persons merged away. When
the clock day moves on, every window moves with it, so every profile is rebuilt.

Exactly once: every table's commit records the silver versions (and the identity version and
clock day) it reflects as app transactions. A rerun adds nothing; after a crash between tables
the next run finishes exactly the range the interrupted run had started.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import reduce

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipelines.config import PolicyCfg, Settings
from pipelines.identity.outputs import CHANGED_AT, RESOLVED, SUSPICIOUS
from pipelines.identity.resolve import NO_TENURE
from pipelines.ingest.reference import reference_schema
from pipelines.lakehouse.catalog import (
    ACCOUNTS,
    DAILY,
    FACTS,
    LINKS,
    MAP,
    MERGES,
    OUTBOX,
    PROFILES,
    ref_table,
)
from pipelines.lakehouse.lake import Lake
from pipelines.lakehouse.tagged import (
    KIND,
    apply_cogrouped,
    apply_grouped,
    combined,
    kind_of,
    tag_frames,
    tag_tables,
    untag,
)
from pipelines.profile.build import (
    BOOKKEEPING,
    ProfileInputs,
    build_profiles,
    profile_schema,
    to_arrow,
    usage_from,
)
from pipelines.profile.facts import (
    COUNTERS,
    DAILY_SCHEMA,
    EVENT_SCHEMA,
    FACTS_SCHEMA,
    TENURE_SCHEMA,
    anchored,
    attribute,
    daily_deltas,
    events_frame,
    fact_candidates,
    fact_key,
)
from pipelines.profile.facts_spark import anchor_columns, events_spark, latest_spark
from pipelines.profile.state import (
    CLOCK_APP,
    DATA_CLOCK,
    IDENTITY_APP,
    OUTBOX_SCHEMA,
    REBUILD_APP,
    app_id,
    ranges_of,
    recorded_clock,
    silver_tables,
)
from pipelines.profile.triggers import compile_triggers, fired

COMPACT_AFTER_FILES = 48  # fold daily usage and facts when a day rolls and they have this many
# Rows one Python worker call takes at once (bounds its memory; more groups than cores only
# when there is that much).
EVENTS_PER_GROUP = 500_000
PERSONS_PER_GROUP = 50_000
CLOCK_LOOKBACK = 100  # gold.profiles commits searched for the last recorded data clock
SETTLE_DAYS = 2  # facts older than this are folded per tenure node (its tenure is known by then)

# Change events numbered in the order they were made (the outbox keeps that order).
SEQUENCED = pa.schema([*OUTBOX_SCHEMA, pa.field("_seq", pa.int64())])
PERSON_SCHEMA = pa.schema([("person_id", pa.string())])
# What attribution gives back per group of anchors.
ATTRIBUTED = combined({"daily": DAILY_SCHEMA, "fact": FACTS_SCHEMA})
NODE_COLUMNS = [
    "node_key",
    "id_type",
    "id_value",
    "tenure",
    "person_id",
    "account_id",
    "account_type",
    "role",
    "valid_from",
    "valid_to",
]


@dataclass
class GoldResult:
    """What one gold refresh did."""

    mode: str = "none"  # none | incremental | full
    events: int = 0
    persons: int = 0  # profiles recomputed
    created: int = 0
    updated: int = 0
    removed: int = 0
    outbox: int = 0
    clock_day: date | None = None
    data_clock: datetime | None = None  # the newest event time the profiles reflect
    seconds: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)


def _pl(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _in(column: str, values: list[str] | pl.Series) -> pl.Expr:
    series = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.String)
    return pl.col(column).is_in(series.implode())


# ---------------------------------------------------------------- refresh


def refresh_gold(
    lake: Lake,
    settings: Settings,
    today: date | None = None,
    until: Mapping[str, int] | None = None,
) -> GoldResult:
    """Bring daily usage, facts, profiles and the outbox up to silver (up to `until`'s version
    of a table: the rows the quality gate judged) and identity."""
    started = time.perf_counter()
    if not lake.exists(MAP):
        return GoldResult()
    silver = silver_tables(settings, lake)
    ranges = ranges_of(lake, silver, until)
    moved = {s: r for s, r in ranges.items() if r[0] is None or r[1] > r[0]}
    ev_target = lake.committed(LINKS, RESOLVED)
    ev_done = lake.committed(PROFILES, IDENTITY_APP) if lake.exists(PROFILES) else None
    clock_done = _clock(lake)
    wall = settings.profile.clock == "wall_clock"
    today = today or datetime.now(UTC).date()
    if not moved and ev_done == ev_target and not (wall and clock_done != today.toordinal()):
        return GoldResult(seconds=time.perf_counter() - started)

    events = _new_events(lake, silver, moved).persist()
    try:
        state = (ev_done, ev_target, clock_done)
        result = _refresh(lake, settings, events, silver, ranges, moved, state, today, wall)
    finally:
        events.unpersist()
    result.seconds = time.perf_counter() - started
    return result


def _refresh(
    lake: Lake,
    settings: Settings,
    events: DataFrame,
    silver: dict[str, str],
    ranges: dict[str, tuple[int | None, int]],
    moved: dict[str, tuple[int | None, int]],
    state: tuple[int | None, int | None, int | None],
    today: date,
    wall: bool,
) -> GoldResult:
    """`refresh_gold` once it knows there is work: `events` are the new silver rows, `state`
    the identity versions the profiles reflect and read up to, and the clock day they end on."""
    ev_done, ev_target, clock_done = state
    txns = {
        t: {app_id(t, silver[s]): r[1] for s, r in moved.items()}
        for t in (DAILY, FACTS, OUTBOX, PROFILES)
    }
    # The identity version too: re-derived handed-over days are part of these commits.
    for t in (DAILY, FACTS):
        txns[t][f"{t}<-{LINKS}"] = ev_target or 0
    meta = {"stage": "gold.refresh"}
    stats = _stats(events)
    spark = lake.spark
    attributed = _attributed(
        lake, settings, events, _buckets(spark, stats.n, EVENTS_PER_GROUP)
    ).persist()
    try:
        daily_rows = kind_of(attributed, "daily", DAILY_SCHEMA)
        fact_rows = kind_of(attributed, "fact", FACTS_SCHEMA)
        handed = _handed_over_days(lake, ev_done, ev_target)
        if handed.height:
            # Up to what this refresh reads; a source the gate holds, up to what gold has of it.
            upto = {s: r[1] for s, r in ranges.items()}
            for s, t in silver.items():
                if (
                    s not in upto
                    and (v := lake.committed(PROFILES, app_id(PROFILES, t))) is not None
                ):
                    upto[s] = v
            redone = _rederived(lake, settings, silver, upto, handed)
            corrections = _arrow(
                _daily_corrections(lake, handed, daily_deltas(redone)), DAILY_SCHEMA
            )
            daily_rows = daily_rows.join(
                lake.frame(handed.to_arrow()), ["id_value", "day"], "left_anti"
            ).unionByName(lake.frame(corrections))
            fact_rows = fact_rows.unionByName(
                lake.frame(_arrow(fact_candidates(redone, settings.profile), FACTS_SCHEMA))
            )
        lake.append_once(DAILY, daily_rows, txns[DAILY], stage="gold.daily_usage", metadata=meta)
        lake.append_once(FACTS, fact_rows, txns[FACTS], stage="gold.facts", metadata=meta)
    finally:
        attributed.unpersist()

    newest = stats.newest.date() if stats.newest is not None else None
    day = today if wall else _event_clock(newest, clock_done, today)
    full = clock_done is None or day.toordinal() != clock_done
    _with_state(txns, {IDENTITY_APP: ev_target or 0, CLOCK_APP: day.toordinal()})
    result = GoldResult(
        mode="full" if full else "incremental",
        events=stats.n,
        clock_day=day,
        data_clock=_as_time(stats.newest_us),
    )
    persons = None if full else _touched(lake, settings, events, ev_done, ev_target)
    stored_day = date.fromordinal(clock_done) if clock_done else None
    _write_profiles(lake, settings, persons, (day, stored_day), (ev_done, ev_target), txns, result)
    if full:
        _compact(lake, settings, day)
    return result


def _stats(events: DataFrame) -> Row:
    """How many events, the newest one's time (`newest`, a naive datetime as PySpark gives it)
    and, exact and zone-free, its epoch microseconds (`newest_us`)."""
    newest = F.max("event_ts")
    stats = events.agg(
        F.count(F.lit(1)).alias("n"),
        newest.alias("newest"),
        F.unix_micros(newest).alias("newest_us"),
    ).first()
    assert stats is not None
    return stats


def _as_time(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1e6, UTC)


def _data_clock(lake: Lake, newest: datetime | None) -> datetime | None:
    """The newest event time gold.profiles reflects once `newest` (this step's newest event)
    is in: the last clock a commit recorded, or for a table written before clocks were
    recorded, its newest `last_event_ts`."""
    stored = None
    dt = lake.table(PROFILES)
    if dt is not None:
        for commit in dt.history(CLOCK_LOOKBACK):  # newest first
            if (stored := recorded_clock(commit)) is not None:
                break
        else:
            column = lake.read_arrow(PROFILES, ["last_event_ts"]).column(0)
            stored = pc.max(column).as_py() if len(column) else None
    return max((t for t in (stored, newest) if t is not None), default=None)


def _event_clock(newest: date | None, clock_done: int | None, today: date) -> date:
    """The day the windows end on: the newest event day seen so far (never moves back)."""
    known = [date.fromordinal(clock_done)] if clock_done is not None else []
    if newest is not None:
        known.append(newest)
    return max(known) if known else today


def _handed_over_days(lake: Lake, ev_done: int | None, ev_target: int | None) -> pl.DataFrame:
    """(id_value, day) of numbers whose tenures changed since `ev_done` and that changed hands
    within one day (a change of holder, a re-activation, with no rest between the tenures):
    counters and latest values of that day were split by what was known when they arrived."""
    if ev_target is None or ev_target == ev_done or not lake.exists(MAP):
        return pl.DataFrame(schema={"id_value": pl.String, "day": pl.Date})
    since = -1 if ev_done is None else ev_done
    changed = lake.read_polars(
        MAP, ["id_value"], (pl.col(CHANGED_AT) > since) & pl.col("tenure").is_not_null()
    ).get_column("id_value")
    tenures = lake.read_polars(
        MAP, ["id_value", "tenure", "valid_to"], _in("id_value", changed.unique())
    ).filter(pl.col("tenure").is_not_null())
    return (
        tenures.sort("id_value", "tenure")
        .with_columns(pl.col("tenure").shift(-1).over("id_value").alias("_next"))
        .filter(
            pl.col("valid_to").is_not_null()
            & pl.col("_next").is_not_null()
            & (pl.col("_next").dt.date() == pl.col("valid_to").dt.date())
        )
        .select("id_value", pl.col("_next").dt.date().alias("day"))
        .unique()
    )


def _rederived(
    lake: Lake,
    settings: Settings,
    silver: dict[str, str],
    versions: dict[str, int],
    days: pl.DataFrame,
) -> pl.DataFrame:
    """Every silver event of those numbers on those days (up to `versions`), attributed with the
    identity map as it is now."""
    values = days.get_column("id_value").unique()
    tables = []
    for s, t in silver.items():
        cols = lake.arrow_schema(t).names
        if "msisdn" in cols and s in versions:
            tables.append(lake.read_arrow(t, where=_in("msisdn", values), version=versions[s]))
    events = anchored(events_frame(tables), settings.profile, list(settings.identity.tenures))
    events = events.with_columns(pl.col("event_ts").dt.date().alias("_day")).join(
        days.rename({"id_value": "anchor_value", "day": "_day"}), on=["anchor_value", "_day"]
    )
    return _attributed_with(lake, settings, events.drop("_day"))


def _daily_corrections(lake: Lake, days: pl.DataFrame, redone: pl.DataFrame) -> pl.DataFrame:
    """Counter rows that turn what the table holds for those (number, day) into `redone`: the
    stored rows negated, then the re-derived ones (counters add up when read)."""
    if not lake.exists(DAILY):  # nothing derived yet: the re-derived rows are the whole story
        return redone
    stored = lake.read_polars(DAILY, where=_in("id_value", days.get_column("id_value").unique()))
    stored = stored.join(days, on=["id_value", "day"])
    negated = stored.with_columns(-pl.col(c) for c in COUNTERS)
    return pl.concat([negated, redone.select(stored.columns)], how="vertical_relaxed")


def _new_events(
    lake: Lake, silver: dict[str, str], moved: dict[str, tuple[int | None, int]]
) -> DataFrame:
    """Silver rows added in each moved source's range (from its Change Data Feed)."""
    spark = lake.spark
    frames = [
        lake.changes(spark, silver[s], done, target).frame for s, (done, target) in moved.items()
    ]
    return events_spark(spark, frames)


def _bucket(column: str, buckets: int) -> Column:
    """The group a row goes to: rows with the same value of `column` always meet."""
    return F.pmod(F.xxhash64(F.col(column)), F.lit(buckets))


def _buckets(spark: SparkSession, rows: int, per_bucket: int) -> int:
    """Groups for `rows`: at least one per core, and none larger than `per_bucket` rows."""
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / per_bucket))


def _attributed(lake: Lake, settings: Settings, events: DataFrame, buckets: int) -> DataFrame:
    """Daily counters and fact candidates of `events` (a tagged frame of `ATTRIBUTED`): each
    event goes to the tenure node the current map gives its anchor, in Python workers that
    each take the events and tenures of a share of the anchors."""
    recyclable: list[str] = list(settings.identity.tenures)
    anchor_type, anchor_value = anchor_columns(settings.profile)
    events = events.withColumn("_anchor", anchor_value).withColumn("_anchor_type", anchor_type)
    values = (
        events.where(F.col("_anchor_type").isin(recyclable))
        .select(F.col("_anchor").alias("id_value"))
        .distinct()
    )
    tenures = (
        lake.read_spark(lake.spark, MAP, ["id_type", "id_value", "tenure"])
        .where(F.col("id_type").isin(recyclable) & F.col("tenure").isNotNull())
        .join(values, "id_value", "left_semi")
    )
    frame = tag_frames(
        {
            "event": events.withColumn("_bucket", _bucket("_anchor", buckets)).drop(
                "_anchor", "_anchor_type"
            ),
            "tenure": tenures.withColumn("_bucket", _bucket("id_value", buckets)),
        },
        ["_bucket"],
    )
    profile = settings.profile

    def attribute_group(group: pa.Table) -> pa.Table:
        rows = attribute(
            anchored(_pl(untag(group, "event", EVENT_SCHEMA)), profile, recyclable),
            _pl(untag(group, "tenure", TENURE_SCHEMA)),
        )
        return tag_tables(
            {
                "daily": _arrow(daily_deltas(rows), DAILY_SCHEMA),
                "fact": _arrow(fact_candidates(rows, profile), FACTS_SCHEMA),
            },
            ATTRIBUTED,
        )

    return apply_grouped(frame, "_bucket", attribute_group, ATTRIBUTED)


def _attributed_with(lake: Lake, settings: Settings, anchored_rows: pl.DataFrame) -> pl.DataFrame:
    """A few anchored rows (a handed-over day's events) attributed on the driver."""
    recyclable: list[str] = list(settings.identity.tenures)
    values = (
        anchored_rows.filter(pl.col("anchor_type").is_in(recyclable))
        .get_column("anchor_value")
        .unique()
    )
    tenures = _pl(
        lake.read_arrow(
            MAP,
            ["id_type", "id_value", "tenure"],
            pl.col("id_type").is_in(recyclable)
            & _in("id_value", values)
            & pl.col("tenure").is_not_null(),
        )
    )
    return attribute(anchored_rows, tenures)


def _arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    return frame.select(schema.names).to_arrow().cast(schema)


def _touched(
    lake: Lake, settings: Settings, events: DataFrame, ev_done: int | None, ev_target: int | None
) -> DataFrame:
    """Persons whose profile this batch may change: every owner of the events' identifiers (an
    account without a person counts for its holder), persons whose identifiers changed, and
    both sides of every merge and split."""
    spark = lake.spark
    anchor_type, anchor_value = anchor_columns(settings.profile)
    anchors = (
        events.select(anchor_type.alias("id_type"), anchor_value.alias("id_value"))
        .dropna()
        .distinct()
    )
    ids = lake.read_spark(spark, MAP, ["id_type", "id_value", "person_id"])
    persons = [anchors.join(ids, ["id_type", "id_value"]).select("person_id")]
    if lake.exists(ACCOUNTS):
        orphans = anchors.where(F.col("id_type") == "account_id").join(
            ids, ["id_type", "id_value"], "left_anti"
        )
        holders = lake.read_spark(spark, ACCOUNTS, ["account_id", "holder_person_id"])
        persons.append(
            orphans.join(holders, orphans.id_value == holders.account_id).select(
                F.col("holder_person_id").alias("person_id")
            )
        )
    if ev_target is not None and ev_target != ev_done:
        since = -1 if ev_done is None else ev_done
        moved = lake.read_spark(spark, MAP, ["person_id", CHANGED_AT])
        persons.append(moved.where(F.col(CHANGED_AT) > since).select("person_id"))
        if lake.exists(MERGES):
            changes = lake.read_spark(spark, MERGES).where(F.col("evidence_version") > since)
            persons += [
                changes.select(F.col(c).alias("person_id"))
                for c in ("from_person_id", "to_person_id")
            ]
    union = reduce(DataFrame.unionByName, persons)
    return union.where(F.col("person_id").isNotNull()).distinct()


def _everyone(lake: Lake) -> DataFrame:
    """Every person of the map, and every person with a profile (to remove those gone)."""
    spark = lake.spark
    persons = lake.read_spark(spark, MAP, ["person_id"])
    if lake.exists(PROFILES):
        persons = persons.unionByName(lake.read_spark(spark, PROFILES, ["person_id"]))
    return persons.distinct()


def _profile_frame(
    lake: Lake, settings: Settings, persons: DataFrame, buckets: int, long_from: date
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Everything the profiles of `persons` are built from, by group of persons, as two tagged
    frames: the daily counters and facts of their identifiers (many narrow rows), and the
    persons, their identity nodes (and the other owners' nodes of their identifiers, which
    decide who a day of a number handed over that day belongs to), account and
    household-contact nodes and their stored profiles (few wide rows). Third: the nodes,
    persisted (both sides read them; the caller unpersists them once the step has run)."""
    spark = lake.spark
    mine = persons.select("person_id", _bucket("person_id", buckets).alias("_bucket"))
    ids = lake.read_spark(spark, MAP, NODE_COLUMNS)
    own = ids.join(mine, "person_id")
    keys = own.select("id_type", "id_value", "_bucket").distinct()
    others = ids.join(keys, ["id_type", "id_value"]).join(
        mine, ["person_id", "_bucket"], "left_anti"
    )
    nodes = [own, others, _contact_nodes(lake, mine)]
    if lake.exists(ACCOUNTS):
        held = (
            lake.read_spark(spark, ACCOUNTS, ["account_id", "holder_person_id"])
            .where(F.col("holder_person_id").isNotNull())
            .select(
                F.concat(F.lit("account_id:"), F.col("account_id")).alias("node_key"),
                F.lit("account_id").alias("id_type"),
                F.col("account_id").alias("id_value"),
                F.col("holder_person_id").alias("person_id"),
            )
            .join(mine, "person_id")
            .join(own.select("node_key", "_bucket"), ["node_key", "_bucket"], "left_anti")
        )
        nodes.append(held)
    node_rows = reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), nodes).persist()
    values = node_rows.select("id_value", "_bucket").distinct()
    context = {"person": mine, "node": node_rows}
    if lake.exists(PROFILES):
        context["stored"] = lake.read_spark(spark, PROFILES).join(mine, "person_id")
    usage = {}
    if lake.exists(DAILY):
        daily = lake.read_spark(spark, DAILY).where(F.col("day") >= F.lit(long_from))
        usage["daily"] = daily.join(values, "id_value")
    if lake.exists(FACTS):
        usage["fact"] = lake.read_spark(spark, FACTS).join(values, "id_value")
    if not usage:  # nothing derived yet: an empty side of the same kind
        usage["daily"] = lake.frame(DAILY_SCHEMA.empty_table()).join(values, "id_value")
    return tag_frames(usage, ["_bucket"]), tag_frames(context, ["_bucket"]), node_rows


def _contact_nodes(lake: Lake, mine: DataFrame) -> DataFrame:
    """Household contacts of the persons of `mine` as identifiers of their profiles: a contact
    is listed on each profile that uses it, yet maps to no person (its own node key, so no
    usage or fact is ever attributed through it)."""
    spark = lake.spark
    if not lake.exists(LINKS):
        schema = "node_key string, id_type string, id_value string, person_id string, _bucket long"
        return spark.createDataFrame([], schema)
    links = lake.read_spark(
        spark,
        LINKS,
        [
            "a_type",
            "a_value",
            "b_type",
            "b_value",
            "person_id",
            "b_person_id",
            "valid_to",
            "status",
        ],
    ).where(F.col("status") == "contact")
    a_is_contact = F.col("b_type") != "email"
    found = links.select(
        F.when(a_is_contact, F.col("a_type")).otherwise(F.col("b_type")).alias("id_type"),
        F.when(a_is_contact, F.col("a_value")).otherwise(F.col("b_value")).alias("id_value"),
        F.when(a_is_contact, F.col("b_person_id")).otherwise(F.col("person_id")).alias("person_id"),
        "valid_to",
    ).where(F.col("person_id").isNotNull())
    return (
        found.join(mine, "person_id")
        .dropDuplicates(["id_type", "id_value", "person_id"])
        .withColumn(
            "node_key", F.concat(F.col("id_type"), F.lit(":"), F.col("id_value"), F.lit("#contact"))
        )
    )


def _ref(lake: Lake, settings: Settings, name: str) -> pl.DataFrame:
    """A reference table; empty (typed by its contract) until its file has been loaded."""
    if lake.exists(ref_table(name)):
        return _pl(lake.read_arrow(ref_table(name)))
    return _pl(reference_schema(settings.reference.tables[name]).empty_table())


def _profiled(
    lake: Lake,
    settings: Settings,
    inputs: tuple[DataFrame, DataFrame],
    days: tuple[date, date | None],
    now: datetime,
) -> DataFrame:
    """Per group of persons, in Python workers: their new profiles, diffed with the stored
    ones into the rows to write, the change events, the triggers fired and the persons gone
    (tagged `profiled`). `inputs`: `_profile_frame`'s two frames; `days`: the clock day and
    the one the stored profiles were built on."""
    profile_group = profile_builder(lake, settings, days, now)
    schema = profiled_schema(profile_schema(settings.policy))
    return apply_cogrouped(*inputs, "_bucket", profile_group, schema)


def profile_builder(
    lake: Lake, settings: Settings, days: tuple[date, date | None], now: datetime
) -> Callable[[pa.Table, pa.Table], pa.Table]:
    """What `_profiled` runs on each group of persons (its two tagged inputs in, tagged outputs
    out); separate so that a profile of one group's work can run it on the driver."""
    day, stored_day = days
    schema = profile_schema(settings.policy)
    # A first build is a backfill, not news: triggers fire from the second refresh on.
    triggers = compile_triggers(settings, schema, day, stored_day) if lake.exists(PROFILES) else []
    nodes_schema = pa.schema([lake.arrow_schema(MAP).field(c) for c in NODE_COLUMNS])
    out = profiled_schema(schema)
    tariffs, segments = (_ref(lake, settings, t) for t in ("tariffs", "segments"))
    profile, scores, policy = settings.profile, settings.scores, settings.policy
    threshold = profile.churn_alert_threshold

    def profile_group(usage: pa.Table, context: pa.Table) -> pa.Table:
        mine = untag(context, "person", PERSON_SCHEMA).column("person_id")
        inputs = ProfileInputs(
            _pl(untag(context, "node", nodes_schema)),
            _pl(untag(usage, "daily", DAILY_SCHEMA)),
            _pl(untag(usage, "fact", FACTS_SCHEMA)),
            tariffs,
            segments,
        )
        built = build_profiles(inputs, day, profile, scores, policy)
        new = built.filter(_in("person_id", pl.Series(mine.to_pylist(), dtype=pl.String)))
        stored = _pl(untag(context, "stored", schema))
        rows, gone, events = diff_profiles(stored, new, schema, now, threshold, policy)
        events += fired(triggers, stored, new, now)
        numbered = [{**e, "_seq": i} for i, e in enumerate(events)]
        return tag_tables(
            {
                "profile": rows,
                "event": pa.Table.from_pylist(numbered, SEQUENCED),
                "gone": pa.table({"person_id": pa.array(gone, pa.string())}),
            },
            out,
        )

    return profile_group


def profiled_schema(schema: pa.Schema) -> pa.Schema:
    """What each group of persons gives back: profile rows, change events, persons gone."""
    return combined({"profile": schema, "event": SEQUENCED, "gone": PERSON_SCHEMA})


def _write_profiles(
    lake: Lake,
    settings: Settings,
    persons: DataFrame | None,
    days: tuple[date, date | None],
    identity: tuple[int | None, int | None],
    txns: dict[str, dict[str, int]],
    result: GoldResult,
) -> None:
    """Build the profiles of `persons` (None: all), diff them with the stored rows, write the
    outbox events and then the changed rows (profiles last: their commit is the watermark).
    `days`: the clock day and the stored profiles' one; `identity` is the (done, target) evidence
    range whose merges and splits are reported."""
    spark = lake.spark
    day = days[0]
    schema = profile_schema(settings.policy)
    long_from = usage_from(day, settings.profile)
    persons = (_everyone(lake) if persons is None else persons).persist()
    cached = [persons]
    try:
        result.persons = persons.count()
        buckets = _buckets(spark, result.persons, PERSONS_PER_GROUP)
        usage, context, nodes = _profile_frame(lake, settings, persons, buckets, long_from)
        cached.append(nodes)
        now = datetime.now(UTC)
        out = _profiled(lake, settings, (usage, context), days, now).persist()
        # One pass computes the step and tells the persons gone, the change events per type
        # and whether any profile row is to be written. The persons and their nodes stay in
        # memory until then: released earlier, every use of them in the plan would recompute
        # them (from the touched persons' joins over the identity tables).
        tally = (
            out.groupBy(
                KIND,
                F.col("gone__person_id").alias("gone"),
                F.col("event__event_type").alias("event_type"),
            )
            .count()
            .collect()
        )
    finally:
        for frame in cached:
            frame.unpersist()
    try:
        gone = sorted(r.gone for r in tally if r[KIND] == "gone")
        counts = Counter({r.event_type: r["count"] for r in tally if r[KIND] == "event"})
        any_rows = any(r[KIND] == "profile" for r in tally)
        changes = kind_of(out, "event", SEQUENCED)
        identity_events = _identity_events(lake, *identity, gone, now)
        counts.update(str(e["event_type"]) for e in identity_events)
        lake.append_once(
            OUTBOX,
            _ordered_outbox(lake, changes, identity_events),
            txns[OUTBOX],
            stage="gold.outbox",
        )
        rows = kind_of(out, "profile", schema)
        table_txns = txns[PROFILES]
        result.data_clock = _data_clock(lake, result.data_clock)
        meta = {"clock_day": day.isoformat(), "stage": "gold.profiles"}
        if result.data_clock is not None:
            meta[DATA_CLOCK] = result.data_clock.isoformat()
        if lake.exists(PROFILES) and not gone and not any_rows:
            lake.append_once(
                PROFILES, schema.empty_table(), table_txns, stage="gold.profiles", metadata=meta
            )
        else:
            lake.upsert(
                PROFILES,
                rows,
                "person_id",
                delete_keys=gone,
                stage="gold.profiles",
                txns=table_txns,
                metadata=meta,
            )
    finally:
        out.unpersist()
    result.by_type = dict(sorted(counts.items()))
    result.created = result.by_type.get("profile.created", 0)
    result.updated = result.by_type.get("profile.updated", 0)
    result.removed = len(gone)
    result.outbox = sum(counts.values())


def _ordered_outbox(
    lake: Lake, changes: DataFrame, identity_events: list[dict[str, object]]
) -> DataFrame:
    """The outbox rows in delivery order, in one file: each person's profile changes in person
    order, then identity's merges, splits and removals in the order they happened."""
    later = [{**e, "_seq": i} for i, e in enumerate(identity_events)]
    rows = changes.withColumn("_part", F.lit(0)).unionByName(
        lake.frame(pa.Table.from_pylist(later, SEQUENCED)).withColumn("_part", F.lit(1))
    )
    return (
        rows.coalesce(1)
        .sortWithinPartitions("_part", F.when(F.col("_part") == 0, F.col("person_id")), "_seq")
        .select(*OUTBOX_SCHEMA.names)
    )


def _with_state(txns: dict[str, dict[str, int]], state: dict[str, int]) -> None:
    """Add the profile state transactions (identity version, clock day...) to the outbox's and
    the profiles' commits, each table under its own name."""
    for table in (OUTBOX, PROFILES):
        txns[table].update({app.replace(PROFILES, table, 1): v for app, v in state.items()})


def diff_profiles(
    stored: pl.DataFrame,
    new: pl.DataFrame,
    schema: pa.Schema,
    now: datetime,
    threshold: float,
    policy: PolicyCfg,
) -> tuple[pa.Table, list[str], list[dict[str, object]]]:
    """Rows to write (new or changed, with bumped profile_version), person ids to delete and
    the change events: created, updated (with the columns that changed), churn risk crossing
    `threshold`, consent changed per purpose."""
    content = [f.name for f in schema if f.name not in BOOKKEEPING]
    fresh = new.select(content)
    old = (
        stored.select([*content, "profile_version"])
        if stored.height
        else pl.DataFrame(schema={**fresh.schema, "profile_version": pl.Int64()})
    )
    hashed_new = fresh.with_columns(_row_hashes(fresh, content).alias("_h"))
    hashed_old = old.with_columns(_row_hashes(old, content).alias("_h"))
    joined = hashed_new.join(
        hashed_old.select(
            "person_id",
            pl.col("_h").alias("_h_old"),
            "profile_version",
            *[pl.col(c).alias(f"{c}__old") for c in content if c != "person_id"],
        ),
        on="person_id",
        how="left",
    )
    changed = joined.filter(pl.col("_h_old").is_null() | (pl.col("_h") != pl.col("_h_old")))
    gone = (
        old.filter(~pl.col("person_id").is_in(fresh.get_column("person_id").implode()))
        .get_column("person_id")
        .to_list()
    )
    changed = changed.with_columns(
        (pl.col("profile_version").fill_null(0) + 1).alias("profile_version"),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("updated_at"),
    )
    events = _profile_events(changed, content, now, threshold, policy)
    rows = to_arrow(changed.select([*content, "profile_version", "updated_at"]), schema)
    return rows, gone, events


def _row_hashes(frame: pl.DataFrame, columns: list[str]) -> pl.Expr:
    return pl.struct([pl.col(c).hash(seed=11).alias(c) for c in columns]).hash(seed=7)


def _event(
    kind: str,
    person: str,
    key: str,
    payload: dict[str, object],
    now: datetime,
    *,
    version: int | None = None,
    related: str | None = None,
) -> dict[str, object]:
    """An outbox row; `event_id` = type, person and `key` (deterministic: a rerun of the same
    change yields the same id, which delivery uses as its idempotency key)."""
    return {
        "event_id": f"{kind}:{person}:{key}",
        "event_type": kind,
        "person_id": person,
        "related_person_id": related,
        "profile_version": version,
        "payload": json.dumps(payload, default=str, sort_keys=True),
        "occurred_at": now,
    }


def _profile_events(
    changed: pl.DataFrame, content: list[str], now: datetime, threshold: float, policy: PolicyCfg
) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    compare = [c for c in content if c != "person_id"]
    diffs = changed.select(
        "person_id",
        "profile_version",
        pl.col("_h_old").is_null().alias("_created"),
        *[
            (pl.col(c).hash(seed=11) != pl.col(f"{c}__old").hash(seed=11)).alias(f"_d_{c}")
            for c in compare
        ],
        "churn_risk",
        pl.col("churn_risk__old"),
        *[
            pl.col(f"consent_{p}_{s}")
            for p in policy.purposes
            for s in ("granted", "since", "legal_basis", "source")
        ],
        *[pl.col(f"consent_{p}_granted__old") for p in policy.purposes],
    )
    consent_purposes = [p for p, spec in policy.purposes.items() if spec.legal_basis != "contract"]
    for row in diffs.iter_rows(named=True):
        person, version = row["person_id"], row["profile_version"]
        key, v = str(version), {"version": version}
        if row["_created"]:
            events.append(_event("profile.created", person, key, {}, now, **v))
        else:
            cols = [c for c in compare if row[f"_d_{c}"]]
            events.append(
                _event("profile.updated", person, key, {"changed_columns": cols}, now, **v)
            )
        before, after = row["churn_risk__old"] or 0.0, row["churn_risk"]
        if (before < threshold) != (after < threshold):
            events.append(
                _event(
                    "churn_risk.crossed",
                    person,
                    key,
                    {
                        "from": before,
                        "to": after,
                        "threshold": threshold,
                        "direction": "up" if after >= threshold else "down",
                    },
                    now,
                    **v,
                )
            )
        for p in consent_purposes:
            was, now_granted = (
                bool(row[f"consent_{p}_granted__old"]),
                bool(row[f"consent_{p}_granted"]),
            )
            if was != now_granted:
                events.append(
                    _event(
                        "consent.changed",
                        person,
                        f"{version}:{p}",
                        {
                            "purpose": p,
                            "granted": now_granted,
                            "since": row[f"consent_{p}_since"],
                            "legal_basis": row[f"consent_{p}_legal_basis"],
                            "source": row[f"consent_{p}_source"],
                        },
                        now,
                        **v,
                    )
                )
    return events


def _identity_events(
    lake: Lake,
    ev_done: int | None,
    ev_target: int | None,
    gone: list[str],
    now: datetime,
) -> list[dict[str, object]]:
    """Merges and splits identity recorded since the last refresh, of persons that had a
    profile (a person merged before its first profile was written is nobody's news); a removed
    profile that was not merged into another is `profile.removed`. Read before the profiles
    are written (a few rows: the changes of one refresh)."""
    events: list[dict[str, object]] = []
    merged: set[str] = set()
    if ev_target is not None and ev_target != ev_done and lake.exists(MERGES):
        since = -1 if ev_done is None else ev_done
        rows = lake.read_arrow(
            MERGES,
            where=(pl.col("evidence_version") > since) & (pl.col("evidence_version") <= ev_target),
        )
        froms = rows.column("from_person_id").to_pylist()
        had_profile = (
            set(
                lake.read_arrow(PROFILES, ["person_id"], _in("person_id", froms))
                .column(0)
                .to_pylist()
            )
            if froms and lake.exists(PROFILES)
            else set()
        )
        for r in rows.sort_by(
            [
                ("evidence_version", "ascending"),
                ("from_person_id", "ascending"),
                ("to_person_id", "ascending"),
            ]
        ).to_pylist():
            if r["change"] == SUSPICIOUS:  # for the fraud team, profile or not
                events.append(
                    _event(
                        "identity.suspicious_link",
                        r["to_person_id"],
                        f"{r['link_edge_key']}:{r['evidence_version']}",
                        {
                            "stranger_person_id": r["from_person_id"],
                            "link_rule": r["link_rule"],
                            "link_event_id": r["link_event_id"],
                            "link_event_ts": r["link_event_ts"],
                            "evidence_version": r["evidence_version"],
                        },
                        now,
                        related=r["from_person_id"],
                    )
                )
                continue
            if r["from_person_id"] not in had_profile:
                continue
            key = f"{r['to_person_id']}:{r['evidence_version']}"
            payload = {
                k: r[k]
                for k in (
                    "identifiers_moved",
                    "link_rule",
                    "link_event_id",
                    "link_event_ts",
                    "evidence_version",
                )
            }
            if r["change"] == "merge":
                merged.add(r["from_person_id"])
                events.append(
                    _event(
                        "profile.merged",
                        r["from_person_id"],
                        key,
                        {**payload, "into": r["to_person_id"]},
                        now,
                        related=r["to_person_id"],
                    )
                )
            elif r["change"] == "split":
                events.append(
                    _event(
                        "profile.split",
                        r["from_person_id"],
                        key,
                        {**payload, "new_person_id": r["to_person_id"]},
                        now,
                        related=r["to_person_id"],
                    )
                )
    for p in gone:
        if p not in merged:
            events.append(_event("profile.removed", p, str(ev_target), {}, now))
    return events


# ---------------------------------------------------------------- compaction, rebuild, time travel


def _compact(lake: Lake, settings: Settings, day: date) -> None:
    """Fold the append-only daily usage and facts once they have many files: same content,
    fewer and larger files (app transactions are kept). Facts are re-keyed to the tenure the
    current identity map gives their time before folding, so two owners of a recycled number
    are never folded together."""
    spark = lake.spark
    for table in (DAILY, FACTS):
        if lake.file_count(table) < COMPACT_AFTER_FILES:
            continue
        version = lake.version(table)
        rows = lake.read_spark(spark, table, version=version)
        if table == DAILY:
            folded = _fold_daily(rows)
        else:
            settled = day - timedelta(days=SETTLE_DAYS)
            folded = latest_spark(_rekeyed(lake, settings, rows, settled))
        lake.overwrite(
            table, folded, stage="gold.compact", metadata={"compacted_version": str(version)}
        )


def _rekeyed(lake: Lake, settings: Settings, facts: DataFrame, settled: date) -> DataFrame:
    """Facts with `node_key` (and the fact_key of line facts) from the current map's tenures
    (in Python workers, a share of the identifiers each); facts older than `settled` lose the
    day from their key, so they fold to one row."""
    recyclable: list[str] = list(settings.identity.tenures)
    buckets = _buckets(lake.spark, lake.rows(FACTS), EVENTS_PER_GROUP)
    tenures = lake.read_spark(lake.spark, MAP, ["id_type", "id_value", "tenure"]).where(
        F.col("id_type").isin(recyclable) & F.col("tenure").isNotNull()
    )
    frame = tag_frames(
        {
            "fact": facts.withColumn("_bucket", _bucket("id_value", buckets)),
            "tenure": tenures.withColumn("_bucket", _bucket("id_value", buckets)),
        },
        ["_bucket"],
    )
    out = combined({"fact": FACTS_SCHEMA})

    def rekey_group(group: pa.Table) -> pa.Table:
        facts = _pl(untag(group, "fact", FACTS_SCHEMA))
        tenures = _pl(untag(group, "tenure", TENURE_SCHEMA))
        rekeyed = rekey_facts(facts, tenures, recyclable, settled)
        return tag_tables({"fact": _arrow(rekeyed, FACTS_SCHEMA)}, out)

    return kind_of(apply_grouped(frame, "_bucket", rekey_group, out), "fact", FACTS_SCHEMA)


def rekey_facts(
    facts: pl.DataFrame, tenures: pl.DataFrame, recyclable: list[str], settled: date
) -> pl.DataFrame:
    """`_rekeyed` for one share of the identifiers (`tenures`: their id_type, id_value,
    tenure)."""
    as_events = facts.rename(
        {"id_type": "anchor_type", "id_value": "anchor_value", "ts": "event_ts"}
    ).with_columns(
        pl.when(pl.col("anchor_type").is_in(recyclable))
        .then(pl.lit(NO_TENURE, pl.Int64()))
        .otherwise(None)
        .alias("start"),
        (pl.col("subject") == pl.col("node_key")).alias("_per_node"),
    )
    rekeyed = attribute(as_events.drop("node_key"), tenures)
    return (
        rekeyed.rename({"anchor_type": "id_type", "anchor_value": "id_value", "event_ts": "ts"})
        .with_columns(
            pl.when("_per_node")
            .then(pl.col("node_key"))
            .otherwise(pl.col("subject"))
            .alias("subject")
        )
        .with_columns(
            pl.when(pl.col("ts").dt.date() < settled)
            .then(fact_key(pl.col("fact"), pl.col("subject"), None))
            .otherwise(fact_key(pl.col("fact"), pl.col("subject"), pl.col("ts")))
            .alias("fact_key")
        )
        .drop("_per_node")
    )


def _fold_daily(rows: DataFrame) -> DataFrame:
    """One row per identifier, day and ingest tenure: the counters summed."""
    sums = [
        F.sum(c).cast("decimal(18,2)" if c == "payment_amount" else "bigint").alias(c)
        for c in COUNTERS
    ]
    return rows.groupBy("id_type", "id_value", "day", "tenure").agg(*sums)


def rebuild_gold(
    lake: Lake,
    settings: Settings,
    progress: Callable[[str], None] | None = None,
    today: date | None = None,
) -> GoldResult:
    """Recompute daily usage and facts from all of silver, then every profile (after a rule
    change, or to check the incremental state). Profiles that come out the same are not
    rewritten; those that differ are written with their change events."""
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    silver = silver_tables(settings, lake)
    if not silver or not lake.exists(MAP):
        return GoldResult()
    targets = {s: lake.version(t) or 0 for s, t in silver.items()}
    spark = lake.spark
    events = events_spark(
        spark, [lake.read_spark(spark, silver[s], version=v) for s, v in targets.items()]
    ).persist()
    try:
        stats = _stats(events)
        attributed = _attributed(
            lake, settings, events, _buckets(spark, stats.n, EVENTS_PER_GROUP)
        ).persist()
    finally:
        events.unpersist()
    say(f"{stats.n:,} silver events attributed ({_secs(started)})")
    txns = {t: {app_id(t, silver[s]): v for s, v in targets.items()} for t in (DAILY, FACTS)}
    try:
        lake.overwrite(
            DAILY,
            _fold_daily(kind_of(attributed, "daily", DAILY_SCHEMA)),
            stage="gold.rebuild",
            txns=txns[DAILY],
        )
        lake.overwrite(
            FACTS,
            latest_spark(kind_of(attributed, "fact", FACTS_SCHEMA)),
            stage="gold.rebuild",
            txns=txns[FACTS],
        )
    finally:
        attributed.unpersist()
    say(f"daily usage and facts rewritten ({_secs(started)})")
    today = today or datetime.now(UTC).date()
    clock_done = _clock(lake)
    wall = settings.profile.clock == "wall_clock"
    newest = stats.newest.date() if stats.newest is not None else None
    day = today if wall else _event_clock(newest, clock_done, today)
    result = recompute_profiles(
        lake, settings, day, targets={silver[s]: v for s, v in targets.items()}
    )
    result.events = stats.n
    say(f"profiles: {result.created:,} created, {result.updated:,} updated ({_secs(started)})")
    result.seconds = time.perf_counter() - started
    return result


def recompute_profiles(
    lake: Lake, settings: Settings, day: date | None = None, targets: dict[str, int] | None = None
) -> GoldResult:
    """Every profile from the daily usage and facts as they stand (same clock day unless one is
    given): the check that incremental refreshes left nothing behind. Differences are written
    with their change events; when there are none no profile row is rewritten."""
    started = time.perf_counter()
    done = _clock(lake)
    if day is None:
        day = date.fromordinal(done) if done else datetime.now(UTC).date()
    ev_target = lake.committed(LINKS, RESOLVED)
    runs = (lake.committed(PROFILES, REBUILD_APP) or 0) + 1 if lake.exists(PROFILES) else 1
    out: dict[str, dict[str, int]] = {
        t: {app_id(t, silver): v for silver, v in (targets or {}).items()}
        for t in (OUTBOX, PROFILES)
    }
    _with_state(out, {IDENTITY_APP: ev_target or 0, CLOCK_APP: day.toordinal(), REBUILD_APP: runs})
    result = GoldResult(mode="full", clock_day=day)
    ev_done = lake.committed(PROFILES, IDENTITY_APP) if lake.exists(PROFILES) else None
    stored_day = date.fromordinal(done) if done else None
    _write_profiles(lake, settings, None, (day, stored_day), (ev_done, ev_target), out, result)
    result.seconds = time.perf_counter() - started
    return result


def _clock(lake: Lake) -> int | None:
    """The clock day (ordinal) the stored profiles were built on."""
    return lake.committed(PROFILES, CLOCK_APP) if lake.exists(PROFILES) else None


def _secs(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"
