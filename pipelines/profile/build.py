"""The gold profile of a set of persons, from their identity nodes, daily counters and facts.

`build_profiles` is a pure function of its inputs: the same nodes, counters, facts, reference
tables and clock day give the same rows, so an incremental refresh of some persons and a full
rebuild of all agree row for row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl
import pyarrow as pa

from pipelines.config import ConfigError, PolicyCfg, ProfileCfg, ScoresCfg, Settings
from pipelines.lakehouse.catalog import PROFILES
from pipelines.profile.facts import COUNTERS, MONEY, TS
from pipelines.profile.scores import add_scores
from pipelines.profile.triggers import check_triggers

BOOKKEEPING = ("profile_version", "updated_at")

BALANCE = pa.struct([("msisdn", pa.string()), ("balance", MONEY), ("as_of", TS)])
DRIVER = pa.struct(
    [("feature", pa.string()), ("value", pa.float64()), ("contribution", pa.float64())]
)


def check_policy(settings: Settings) -> None:
    """Policy attributes must be profile columns (a typo would silently serve nothing). Every
    entry point runs it after loading conf (the CLI, the API, Dagster): conf cannot, as the
    profile's columns are declared here, above it. Triggers' rules are checked the same way."""
    schema = profile_schema(settings.policy)
    columns = set(schema.names)
    unknown = sorted(set(settings.policy.attributes) - columns)
    if unknown:
        raise ConfigError(
            f"{settings.conf_dir / 'policy.yaml'}: attributes: {unknown} are not gold.profiles "
            "columns (see docs/profiles.md)"
        )
    check_triggers(settings, schema)


def profile_schema(policy: PolicyCfg) -> pa.Schema:
    """Column order and types of gold.profiles (consent columns follow the policy's purposes)."""
    consent = []
    for p in policy.purposes:
        consent += [
            (f"consent_{p}_granted", pa.bool_()),
            (f"consent_{p}_since", TS),
            (f"consent_{p}_legal_basis", pa.string()),
            (f"consent_{p}_source", pa.string()),
        ]
    return pa.schema(
        [
            ("person_id", pa.string()),
            ("primary_msisdn", pa.string()),
            ("msisdns", pa.list_(pa.string())),
            ("emails", pa.list_(pa.string())),
            ("app_user_ids", pa.list_(pa.string())),
            ("account_id", pa.string()),
            ("account_type", pa.string()),
            ("account_role", pa.string()),
            ("balance_total", MONEY),
            ("balances", pa.list_(BALANCE)),
            ("tariff_id", pa.string()),
            ("tariff_name", pa.string()),
            ("tariff_monthly_fee", MONEY),
            ("contract_end_ts", TS),
            ("last_interaction_ts", TS),
            ("last_interaction_channel", pa.string()),
            ("last_region", pa.string()),
            ("last_region_ts", TS),
            ("open_cases", pa.int64()),
            ("next_promise_due_ts", TS),
            ("last_sim_swap_ts", TS),
            ("last_sim_swap_msisdn", pa.string()),
            ("monthly_spend", MONEY),
            ("value_segment", pa.string()),
            ("data_bytes_7d", pa.int64()),
            ("data_bytes_30d", pa.int64()),
            ("data_bundle_used", pa.float64()),
            ("data_sessions_7d", pa.int64()),
            ("data_sessions_30d", pa.int64()),
            ("payments_30d", pa.int64()),
            ("payments_sum_30d", MONEY),
            ("app_opens_7d", pa.int64()),
            ("churn_risk", pa.float64()),
            ("churn_drivers", pa.list_(DRIVER)),
            ("lifetime_value", MONEY),
            *consent,
            ("last_event_ts", TS),
            ("profile_version", pa.int64()),
            ("updated_at", TS),
        ]
    )


@dataclass(frozen=True)
class ProfileInputs:
    """What the profiles of some persons are built from (Polars frames).

    nodes: identity_map rows of the persons (node_key, id_type, id_value, tenure, person_id,
    account_id, account_type, role, valid_from, valid_to), plus account nodes of accounts they
    hold;
    daily: silver.daily_usage rows of their identifiers (any number per identifier and day);
    facts: silver.profile_facts rows of their identifiers (any number per fact_key);
    tariffs, segments: the reference tables.
    """

    nodes: pl.DataFrame
    daily: pl.DataFrame
    facts: pl.DataFrame
    tariffs: pl.DataFrame
    segments: pl.DataFrame


def _latest_by(frame: pl.DataFrame, by: str, *cols: str) -> pl.DataFrame:
    return frame.sort("ts", "event_id").group_by(by).agg(pl.col(c).last() for c in cols)


def build_profiles(
    inputs: ProfileInputs,
    day: date,
    profile: ProfileCfg,
    scores: ScoresCfg,
    policy: PolicyCfg,
) -> pl.DataFrame:
    """One row per person of `inputs.nodes`, as of clock day `day` (windows end on it)."""
    nodes = inputs.nodes
    persons = nodes.select("person_id").unique().sort("person_id")
    current = nodes.filter(pl.col("valid_to").is_null())

    lines = (
        current.filter(pl.col("id_type") == "msisdn")
        .sort("valid_from", "id_value")
        .group_by("person_id", maintain_order=True)
        .agg(
            pl.col("id_value").alias("msisdns"),
            pl.col("id_value").first().alias("primary_msisdn"),
            pl.col("node_key").first().alias("_primary_node"),
            pl.col("valid_from").min().alias("_customer_since"),
        )
    )

    def ids(id_type: str, name: str) -> pl.DataFrame:
        return (
            current.filter(pl.col("id_type") == id_type)
            .sort("id_value")
            .group_by("person_id", maintain_order=True)
            .agg(pl.col("id_value").unique(maintain_order=True).alias(name))
        )

    # Account context: the primary line's, else a closed line's, else an account identifier's.
    account = (
        nodes.filter(pl.col("account_id").is_not_null())
        .with_columns(
            (pl.col("id_type") != "msisdn").alias("_k1"),
            pl.col("valid_to").is_not_null().alias("_k2"),
        )
        .sort("_k1", "_k2", "valid_from", "node_key")
        .group_by("person_id", maintain_order=True)
        .agg(
            pl.col("account_id").first(),
            pl.col("account_type").first(),
            pl.col("role").first().alias("account_role"),
        )
    )

    # Rolling windows over the daily counters, ending on `day` (later days are not counted).
    short_from = day - timedelta(days=profile.windows.short_days - 1)
    long_from = day - timedelta(days=profile.windows.long_days - 1)
    daily = attribute_daily(
        inputs.daily.filter(pl.col("day").is_between(usage_from(day, profile), day)), nodes
    ).with_columns(
        (pl.col("day") >= short_from).alias("_short"),
        (pl.col("day") >= long_from).alias("_long"),
        (pl.col("day") >= day.replace(day=1)).alias("_month"),
    )
    zero = pl.lit(0, pl.Int64())

    def long(column: str) -> pl.Expr:
        return pl.when("_long").then(pl.col(column))

    windows = daily.group_by("person_id").agg(
        pl.when("_short").then(pl.col("data_bytes")).otherwise(zero).sum().alias("data_bytes_7d"),
        long("data_bytes").sum().alias("data_bytes_30d"),
        pl.when("_month").then(pl.col("data_bytes")).sum().alias("_data_bytes_month"),
        pl.when("_short")
        .then(pl.col("data_sessions"))
        .otherwise(zero)
        .sum()
        .alias("data_sessions_7d"),
        long("data_sessions").sum().alias("data_sessions_30d"),
        long("payments").sum().alias("payments_30d"),
        long("payment_amount").sum().cast(pl.Decimal(18, 2)).alias("payments_sum_30d"),
        pl.when("_short").then(pl.col("app_opens")).otherwise(zero).sum().alias("app_opens_7d"),
    )

    facts = attribute_facts(inputs.facts, nodes)

    def fact(name: str) -> pl.DataFrame:
        return facts.filter(pl.col("fact") == name)

    current_lines = current.filter(pl.col("id_type") == "msisdn").select(
        "node_key", pl.col("id_value").alias("msisdn")
    )
    balances = (
        fact("balance")
        .join(current_lines, on="node_key")
        .sort("msisdn")
        .group_by("person_id", maintain_order=True)
        .agg(
            pl.col("value")
            .cast(pl.Decimal(18, 2))
            .sum()
            .cast(pl.Decimal(18, 2))
            .alias("balance_total"),
            pl.struct(
                pl.col("msisdn"),
                pl.col("value").cast(pl.Decimal(18, 2)).alias("balance"),
                pl.col("ts").alias("as_of"),
            ).alias("balances"),
        )
    )
    tariffs = inputs.tariffs.select(
        pl.col("tariff_id"),
        pl.col("name").alias("tariff_name"),
        pl.col("monthly_fee").cast(pl.Decimal(18, 2)).alias("tariff_monthly_fee"),
        pl.col("data_gb").cast(pl.Float64()).alias("_bundle_gb"),
        (
            pl.col("term_months").cast(pl.Int64())
            if "term_months" in inputs.tariffs.columns
            else pl.lit(None, pl.Int64())
        ).alias("_term_months"),
    )
    # The primary line's tariff; its minimum term runs from the event that set it.
    tariff = (
        fact("tariff")
        .join(
            lines.select("person_id", pl.col("_primary_node").alias("node_key")),
            on=["person_id", "node_key"],
        )
        .select("person_id", pl.col("value").alias("tariff_id"), pl.col("ts").alias("_tariff_ts"))
        .join(tariffs, on="tariff_id", how="left")
        .with_columns(
            pl.col("_tariff_ts")
            .dt.offset_by(pl.format("{}mo", pl.col("_term_months")))
            .alias("contract_end_ts")
        )
    )
    swap = _latest_by(fact("sim_swap"), "person_id", "ts", "value").rename(
        {"ts": "last_sim_swap_ts", "value": "last_sim_swap_msisdn"}
    )
    interaction = _latest_by(fact("interaction"), "person_id", "ts", "value").rename(
        {"ts": "last_interaction_ts", "value": "last_interaction_channel"}
    )
    region = _latest_by(fact("region"), "person_id", "ts", "value").rename(
        {"ts": "last_region_ts", "value": "last_region"}
    )
    seen = fact("seen").group_by("person_id").agg(pl.col("ts").max().alias("last_event_ts"))
    open_cases = fact("case").filter(pl.col("value") == "open")
    cases = open_cases.group_by("person_id").agg(pl.len().cast(pl.Int64()).alias("open_cases"))
    promises = (
        fact("promise")
        .join(open_cases.select("person_id", "subject"), on=["person_id", "subject"])
        .group_by("person_id")
        .agg(
            pl.col("value")
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_zone="UTC", time_unit="us")
            .min()
            .alias("next_promise_due_ts")
        )
    )

    out = persons
    for part in (
        lines,
        ids("email", "emails"),
        ids("app_user_id", "app_user_ids"),
        account,
        balances,
        tariff,
        interaction,
        region,
        cases,
        promises,
        swap,
        windows,
        seen,
    ):
        out = out.join(part, on="person_id", how="left")
    empty = pl.lit([], pl.List(pl.String()))
    out = out.with_columns(
        pl.col("msisdns").fill_null(empty),
        pl.col("emails").fill_null(empty),
        pl.col("app_user_ids").fill_null(empty),
        pl.col("open_cases").fill_null(0),
        *(pl.col(f"{c}").fill_null(0) for c in _int_windows()),
        pl.col("payments_sum_30d").fill_null(pl.lit(0, pl.Decimal(18, 2))),
    )
    bundle = pl.col("_bundle_gb") * 1e9
    out = out.with_columns(
        pl.col("payments_sum_30d").alias("monthly_spend"),
        # Share of the tariff's monthly data bundle used this calendar month (none: no bundle).
        pl.when(bundle > 0)
        .then(pl.col("_data_bytes_month").fill_null(0) / bundle)
        .alias("data_bundle_used"),
        pl.col("balances").fill_null(pl.lit([], dtype=out.schema["balances"])),
    )
    out = _segment(out, inputs.segments)
    out = _consent(out, facts, policy)
    last_touch = pl.col("last_interaction_ts").dt.date()
    out = out.with_columns(
        (pl.lit(day) - last_touch).dt.total_days().alias("_days_since_interaction"),
        (pl.lit(day) - pl.col("_customer_since").dt.date()).dt.total_days().alias("_tenure_days"),
    )
    return add_scores(out, scores, profile.windows.short_days, profile.windows.long_days)


def usage_from(day: date, profile: ProfileCfg) -> date:
    """The first day of daily counters a profile on `day` reads: the long window's, or the
    calendar month's (the data bundle's period) when that starts earlier."""
    return min(day - timedelta(days=profile.windows.long_days - 1), day.replace(day=1))


def _owners(nodes: pl.DataFrame) -> pl.DataFrame:
    """Who owned each identifier when: a recyclable identifier's tenure runs from its start to
    its end (open: null); other identifiers belong to their person throughout. A household
    contact is on several profiles but owns nothing: what arrives keyed by it (a consent given
    by the household email) is no one person's."""
    return nodes.filter(~pl.col("node_key").str.ends_with("#contact")).select(
        "person_id",
        "node_key",
        "id_type",
        "id_value",
        pl.col("tenure").alias("_from"),
        pl.col("valid_to").alias("_to"),
    )


def attribute_daily(daily: pl.DataFrame, nodes: pl.DataFrame) -> pl.DataFrame:
    """Daily counters (folded per identifier, day and tenure known at ingest) with the person
    whose tenure covers the day. Where two tenures cover it (the number changed hands that day:
    a change of holder without a rest), each row goes to the tenure it was attributed to at
    ingest; a row whose ingest tenure is neither (its opening arrived later) counts for both."""
    folded = daily.group_by("id_type", "id_value", "day", "tenure").agg(
        pl.col(c).sum() for c in COUNTERS
    )
    day = pl.col("day")
    covering = folded.join(_owners(nodes), on=["id_type", "id_value"]).filter(
        (pl.col("_from").is_null() | (day >= pl.col("_from").dt.date()))
        & (pl.col("_to").is_null() | (day <= pl.col("_to").dt.date()))
    )
    row = ["id_type", "id_value", "day", "tenure"]
    matched = pl.col("_from").is_not_null() & (pl.col("_from") == pl.col("tenure"))
    covering = covering.with_columns(
        pl.len().over(row).alias("_owners"), matched.any().over(row).alias("_matched")
    )
    return (
        covering.filter((pl.col("_owners") == 1) | ~pl.col("_matched") | matched)
        .group_by("person_id", "id_type", "id_value", "day")
        .agg(pl.col(c).sum() for c in COUNTERS)
    )


def attribute_facts(facts: pl.DataFrame, nodes: pl.DataFrame) -> pl.DataFrame:
    """The latest value of each fact per owning node (or case), with its person: every
    candidate row goes to the node whose tenure holds its time, then the newest wins. Folding
    only after attribution keeps a recycled number's owners apart even when some events were
    recorded before the new tenure was known."""
    ts = pl.col("ts")
    per_node = pl.col("subject") == pl.col("_ingest_node")
    return (
        facts.rename({"node_key": "_ingest_node"})
        .join(_owners(nodes), on=["id_type", "id_value"])
        .filter(
            (pl.col("_from").is_null() | (ts >= pl.col("_from")))
            & (pl.col("_to").is_null() | (ts <= pl.col("_to")))
        )
        .with_columns(
            pl.when(per_node)
            .then(pl.concat_str([pl.col("fact"), pl.lit("|"), pl.col("node_key")]))
            .otherwise(pl.concat_str([pl.col("fact"), pl.lit("|"), pl.col("subject")]))
            .alias("fact_key")
        )
        .sort("ts", "event_id")
        .group_by("fact_key", "person_id", maintain_order=True)
        .last()
    )


def _int_windows() -> list[str]:
    return [
        "data_bytes_7d",
        "data_bytes_30d",
        "data_sessions_7d",
        "data_sessions_30d",
        "payments_30d",
        "app_opens_7d",
    ]


def _segment(out: pl.DataFrame, segments: pl.DataFrame) -> pl.DataFrame:
    """The catalogue segment whose [min, max) monthly spend range holds the person's spend."""
    if segments.is_empty():
        return out.with_columns(pl.lit(None, pl.String()).alias("value_segment"))
    seg = segments.select(
        "segment_id",
        pl.col("min_monthly_spend").cast(pl.Float64()).alias("_lo"),
        pl.col("max_monthly_spend").cast(pl.Float64()).alias("_hi"),
    ).sort("_lo")
    spend = pl.col("monthly_spend").cast(pl.Float64())
    matched = (
        out.select("person_id", spend.alias("_spend"))
        .join(seg, how="cross")
        .filter(
            (pl.col("_spend") >= pl.col("_lo"))
            & (pl.col("_hi").is_null() | (pl.col("_spend") < pl.col("_hi")))
        )
        .group_by("person_id")
        .agg(pl.col("segment_id").first().alias("value_segment"))
    )
    return out.join(matched, on="person_id", how="left")


def _consent(out: pl.DataFrame, facts: pl.DataFrame, policy: PolicyCfg) -> pl.DataFrame:
    """Per purpose: a contract purpose holds while the person has an open line; a
    consent purpose follows the person's latest consent event for it (by event time, across
    all their identifiers); legitimate interest holds unless the latest event withdrew it."""
    has_contract = pl.col("msisdns").list.len() > 0
    for purpose, spec in policy.purposes.items():
        prefix = f"consent_{purpose}"
        if spec.legal_basis == "contract":
            out = out.with_columns(
                has_contract.alias(f"{prefix}_granted"),
                pl.when(has_contract)
                .then(pl.col("_customer_since"))
                .otherwise(None)
                .alias(f"{prefix}_since"),
                pl.when(has_contract).then(pl.lit("contract")).alias(f"{prefix}_legal_basis"),
                pl.when(has_contract).then(pl.lit("contract")).alias(f"{prefix}_source"),
            )
            continue
        latest = _latest_by(
            facts.filter(pl.col("fact") == f"consent:{purpose}"),
            "person_id",
            "ts",
            "value",
            "detail",
            "channel",
        ).select(
            "person_id",
            (pl.col("value") == "granted").alias(f"{prefix}_granted"),
            pl.col("ts").alias(f"{prefix}_since"),
            pl.col("detail").alias(f"{prefix}_legal_basis"),
            pl.col("channel").alias(f"{prefix}_source"),
        )
        default = spec.legal_basis == "legitimate_interest"
        out = out.join(latest, on="person_id", how="left").with_columns(
            pl.col(f"{prefix}_granted").fill_null(default)
        )
    return out


def to_arrow(profiles: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Profile rows in the table's column order and types (bookkeeping columns may be absent
    and come back null)."""
    cols = [
        profiles.get_column(f.name).to_arrow()
        if f.name in profiles.columns
        else pa.nulls(profiles.height, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(
        [c.cast(f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
    )


__all__ = [
    "BOOKKEEPING",
    "COUNTERS",
    "PROFILES",
    "ProfileInputs",
    "build_profiles",
    "profile_schema",
]
