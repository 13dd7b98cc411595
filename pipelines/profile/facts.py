"""Silver events -> per-identifier facts the profile is folded from.

Every event is anchored on one identifier: the first its source's anchors list carries. Two
tables hold what the profile needs, both append-only and written exactly once per silver version:

- `silver.daily_usage`: counters per (identifier, day), one row per identifier, day and
  micro-batch (rows of one identifier and day add up; compaction folds them);
- `silver.profile_facts`: candidate "latest" values per (fact, subject, day) (balance, tariff,
  last interaction, region, SIM swap, consent per purpose, case status, promise due date); the
  newest by event time wins when read, so a late event never overwrites a newer value.

Which person a row belongs to is decided when the profile is built, from the identity map as it
is then: a recyclable identifier's (msisdn) rows go to the tenure whose validity holds the event
time (facts) or day (counters). So usage that arrived before its line's activation was known is
still attributed right, and a recycled number's new owner never inherits the previous owner's
usage. Facts also carry the tenure node known at ingest (`node_key`), so the latest value of one
owner's tenure is never folded into another's.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipelines.config import ProfileCfg
from pipelines.identity.resolve import NO_TENURE, node_key_expr
from pipelines.lakehouse.arrowtypes import spark_ready

TS = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(18, 2)

DAILY_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("day", pa.date32()),
        # The tenure the events were attributed to when ingested: on the day a number changes
        # hands (a change of holder without a rest) it tells the two owners' usage apart.
        ("tenure", TS),
        ("data_bytes", pa.int64()),
        ("data_sessions", pa.int64()),
        ("payments", pa.int64()),
        ("payment_amount", MONEY),
        ("app_opens", pa.int64()),
        ("events", pa.int64()),
    ]
)
COUNTERS = [f.name for f in DAILY_SCHEMA][4:]

FACTS_SCHEMA = pa.schema(
    [
        ("fact_key", pa.string()),  # fact|subject[|day]: what "latest" is taken over
        ("fact", pa.string()),
        ("subject", pa.string()),  # the node, or the case for case and promise facts
        ("id_type", pa.string()),  # the identifier the event was anchored on
        ("id_value", pa.string()),
        ("node_key", pa.string()),  # its tenure node as known at ingest (keeps owners apart)
        ("ts", TS),
        ("event_id", pa.string()),
        ("value", pa.string()),
        ("detail", pa.string()),
        ("channel", pa.string()),
    ]
)

# Silver columns the profile reads, with the type they are read as (absent ones are null).
EVENT_COLUMNS: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "source": pl.String(),
    "event_type": pl.String(),
    "event_ts": pl.Datetime("us", "UTC"),
    "msisdn": pl.String(),
    "iccid": pl.String(),
    "app_user_id": pl.String(),
    "email": pl.String(),
    "account_id": pl.String(),
    "passport": pl.String(),
    "bytes_up": pl.Int64(),
    "bytes_down": pl.Int64(),
    "amount": pl.Decimal(18, 2),
    "balance_after": pl.Decimal(18, 2),
    "tariff_id": pl.String(),
    "region": pl.String(),
    "case_id": pl.String(),
    "status": pl.String(),
    "category": pl.String(),
    "due_ts": pl.Datetime("us", "UTC"),
    "purpose": pl.String(),
    "granted": pl.Boolean(),
    "legal_basis": pl.String(),
    "channel": pl.String(),
}


EVENT_SCHEMA = spark_ready(pl.DataFrame(schema=EVENT_COLUMNS).to_arrow().schema)
# The tenures of recyclable identifiers events are attributed to.
TENURE_SCHEMA = pa.schema([("id_type", pa.string()), ("id_value", pa.string()), ("tenure", TS)])


def events_frame(silver_rows: list[pa.Table]) -> pl.DataFrame:
    """Rows of several silver tables as one frame with the columns the profile reads."""
    frames = []
    for rows in silver_rows:
        frame = pl.from_arrow(rows)
        assert isinstance(frame, pl.DataFrame)
        frames.append(
            frame.select(
                pl.col(c).cast(t) if c in frame.columns else pl.lit(None, t).alias(c)
                for c, t in EVENT_COLUMNS.items()
            )
        )
    if not frames:
        return pl.DataFrame(schema=EVENT_COLUMNS)
    return pl.concat(frames, how="vertical")


def anchored(events: pl.DataFrame, cfg: ProfileCfg, recyclable: list[str]) -> pl.DataFrame:
    """`anchor_type`, `anchor_value` per event (the first of its source's anchors it carries);
    `start` is null, or NO_TENURE until `attribute` finds the tenure of a recyclable anchor."""
    anchor_type: pl.Expr = pl.lit(None, pl.String())
    anchor_value: pl.Expr = pl.lit(None, pl.String())
    for source, fields in cfg.anchors.items():
        for f in reversed(fields):  # the first listed wins: build the chain from the back
            hit = (pl.col("source") == source) & pl.col(f).is_not_null()
            anchor_type = pl.when(hit).then(pl.lit(f)).otherwise(anchor_type)
            anchor_value = pl.when(hit).then(pl.col(f)).otherwise(anchor_value)
    return events.with_columns(
        anchor_type.alias("anchor_type"), anchor_value.alias("anchor_value")
    ).with_columns(
        pl.when(pl.col("anchor_type").is_in(recyclable))
        .then(pl.lit(NO_TENURE, pl.Int64()))
        .otherwise(None)
        .alias("start")
    )


def attribute(events: pl.DataFrame, tenures: pl.DataFrame) -> pl.DataFrame:
    """`node_key` per event: for recyclable anchors, the tenure (of `tenures`: id_type,
    id_value, tenure) opened last at or before the event time; events without an anchor (no
    identifier their source's anchors name) get a null node."""
    opens = tenures.select(
        pl.col("id_type").alias("anchor_type"),
        pl.col("id_value").alias("anchor_value"),
        pl.col("tenure").cast(pl.Datetime("us", "UTC")).alias("_open"),
    ).sort("_open")
    joined = events.sort("event_ts").join_asof(
        opens,
        left_on="event_ts",
        right_on="_open",
        by=["anchor_type", "anchor_value"],
        strategy="backward",
        check_sortedness=False,
    )
    start = (
        pl.when(pl.col("start").is_not_null() & pl.col("_open").is_not_null())
        .then(pl.col("_open").dt.epoch("us"))
        .otherwise(pl.col("start"))
    )
    return (
        joined.with_columns(start.alias("start"))
        .with_columns(
            pl.when(pl.col("anchor_value").is_not_null())
            .then(node_key_expr("anchor_type", "anchor_value", "start"))
            .otherwise(None)
            .alias("node_key")
        )
        .rename({"_open": "_tenure"})
        .drop("start")
    )


def _is(source: str, *event_types: str) -> pl.Expr:
    return (pl.col("source") == source) & pl.col("event_type").is_in(list(event_types))


def daily_deltas(events: pl.DataFrame) -> pl.DataFrame:
    """This batch's counters per (anchor identifier, day of event time, UTC)."""
    session_end = _is("network", "data_session_end")
    payment = _is("billing", "payment")
    zero = pl.lit(0, pl.Int64())
    out = (
        events.filter(pl.col("node_key").is_not_null())
        .with_columns(pl.col("event_ts").dt.date().alias("day"))
        .group_by(
            pl.col("anchor_type").alias("id_type"),
            pl.col("anchor_value").alias("id_value"),
            "day",
            pl.col("_tenure").alias("tenure"),
        )
        .agg(
            pl.when(session_end)
            .then(pl.col("bytes_up").fill_null(0) + pl.col("bytes_down").fill_null(0))
            .otherwise(zero)
            .sum()
            .alias("data_bytes"),
            session_end.sum().cast(pl.Int64()).alias("data_sessions"),
            payment.sum().cast(pl.Int64()).alias("payments"),
            pl.when(payment).then(pl.col("amount")).sum().alias("payment_amount"),
            _is("app", "open").sum().cast(pl.Int64()).alias("app_opens"),
            pl.len().cast(pl.Int64()).alias("events"),
        )
        .sort("day", "id_type", "id_value")
    )
    return out.with_columns(pl.col("payment_amount").cast(pl.Decimal(18, 2)))


def _facts(
    events: pl.DataFrame,
    fact: pl.Expr,
    value: pl.Expr,
    *,
    subject: pl.Expr | None = None,
    detail: pl.Expr | None = None,
    channel: pl.Expr | None = None,
) -> pl.DataFrame:
    none = pl.lit(None, pl.String())
    subject = pl.col("node_key") if subject is None else subject
    return events.select(
        fact_key(fact, subject, pl.col("event_ts")).alias("fact_key"),
        fact.alias("fact"),
        subject.alias("subject"),
        pl.col("anchor_type").alias("id_type"),
        pl.col("anchor_value").alias("id_value"),
        pl.col("node_key"),
        pl.col("event_ts").alias("ts"),
        pl.col("event_id"),
        value.cast(pl.String()).alias("value"),
        (detail if detail is not None else none).alias("detail"),
        (channel if channel is not None else none).alias("channel"),
    )


def fact_key(fact: pl.Expr, subject: pl.Expr, ts: pl.Expr | None) -> pl.Expr:
    """`fact|subject|day` for recent facts (`ts` given), `fact|subject` once settled. The day
    keeps two owners of a recycled number apart even while the new tenure is unknown (a number
    is never reissued the day it is given up); settled facts are re-keyed by the current map
    and folded to one row."""
    parts = [fact, pl.lit("|"), subject]
    if ts is not None:
        parts += [pl.lit("|"), ts.dt.date().cast(pl.String())]
    return pl.concat_str(parts)


def fact_candidates(events: pl.DataFrame, cfg: ProfileCfg) -> pl.DataFrame:
    """The newest value of each fact this batch carries (older ones can never win)."""
    ev = events.filter(pl.col("node_key").is_not_null())
    interaction: pl.Expr = pl.lit(None, pl.String())
    for source, types in cfg.interactions.items():
        for event_type, channel in types.items():
            interaction = (
                pl.when(_is(source, event_type)).then(pl.lit(channel)).otherwise(interaction)
            )
    parts = [
        _facts(ev.filter(_is("billing", "payment")), pl.lit("balance"), pl.col("balance_after")),
        _facts(
            ev.filter(_is("billing", "activation", "ownership_change", "tariff_change")),
            pl.lit("tariff"),
            pl.col("tariff_id"),
        ),
        _facts(
            ev.with_columns(interaction.alias("_channel")).filter(pl.col("_channel").is_not_null()),
            pl.lit("interaction"),
            pl.col("_channel"),
        ),
        _facts(ev.filter(_is("network", "location")), pl.lit("region"), pl.col("region")),
        _facts(ev.filter(_is("billing", "sim_swap")), pl.lit("sim_swap"), pl.col("msisdn")),
        _facts(ev, pl.lit("seen"), pl.col("source")),
        _facts(
            ev.filter(_is("crm", "consent")),
            pl.concat_str([pl.lit("consent:"), pl.col("purpose")]),
            pl.when(pl.col("granted")).then(pl.lit("granted")).otherwise(pl.lit("withdrawn")),
            detail=pl.col("legal_basis"),
            channel=pl.col("channel"),
        ),
        _facts(
            ev.filter(_is("crm", "case")),
            pl.lit("case"),
            pl.col("status"),
            subject=pl.col("case_id"),
            detail=pl.col("category"),
        ),
        _facts(
            ev.filter(_is("crm", "promise_to_resolve")),
            pl.lit("promise"),
            pl.col("due_ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
            subject=pl.col("case_id"),
        ),
    ]
    return latest(pl.concat(parts, how="vertical"))


def latest(facts: pl.DataFrame) -> pl.DataFrame:
    """One row per fact_key: the newest by event time (event id breaks ties), so the result
    does not depend on the order events arrived in."""
    return (
        facts.sort("ts", "event_id", nulls_last=False)
        .group_by("fact_key", maintain_order=True)
        .last()
        .sort("fact_key")
    )
