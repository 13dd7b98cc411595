"""Churn risk and lifetime value: deterministic formulas over profile columns.

Each churn feature is defined here once (what it measures); `conf/scores.yaml` gives its weight
and cap. Risk is a logistic function of the weighted sum, and the profile carries the features
that pushed it up most, so a contact-centre agent can read why a customer is at risk.
docs/profiles.md explains each feature and why it moves risk.
"""

from __future__ import annotations

import polars as pl

from pipelines.config import CHURN_FEATURES, ScoresCfg

# Feature name -> expression over profile columns (plus `_days_since_interaction`, `_tenure_days`).
FEATURES: dict[str, pl.Expr] = {
    # days since the customer last touched any channel (never: treated as the cap)
    "days_since_interaction": pl.col("_days_since_interaction").cast(pl.Float64()),
    # share by which this week's daily data use fell below the month's daily average
    "usage_drop": pl.when(pl.col("data_bytes_30d") > 0)
    .then(
        (
            1.0
            - (pl.col("data_bytes_7d") / pl.col("_short_days"))
            / (pl.col("data_bytes_30d") / pl.col("_long_days"))
        ).clip(0.0, 1.0)
    )
    .otherwise(1.0),
    "no_payment_30d": (pl.col("payments_30d") == 0).cast(pl.Float64()),
    "open_cases": pl.col("open_cases").cast(pl.Float64()),
    "low_balance": (
        pl.col("balance_total").cast(pl.Float64()).fill_null(0.0) < pl.col("_low")
    ).cast(pl.Float64()),
    "app_user": (pl.col("app_user_ids").list.len() > 0).cast(pl.Float64()),
    "tenure_years": (pl.col("_tenure_days").cast(pl.Float64()) / 365.25).fill_null(0.0),
}
assert set(FEATURES) == set(CHURN_FEATURES), "conf validation and the definitions must agree"

DRIVER = pl.Struct({"feature": pl.String(), "value": pl.Float64(), "contribution": pl.Float64()})


def add_scores(
    profiles: pl.DataFrame, cfg: ScoresCfg, short_days: int, long_days: int
) -> pl.DataFrame:
    """`churn_risk` in [0, 1], `churn_drivers` (top positive contributions) and
    `lifetime_value`; expects the helper columns named in FEATURES."""
    churn = cfg.churn_risk
    frame = profiles.with_columns(
        pl.lit(float(short_days)).alias("_short_days"),
        pl.lit(float(long_days)).alias("_long_days"),
        pl.lit(churn.low_balance_below).alias("_low"),
    )
    values, contributions = [], []
    for name, f in churn.features.items():
        value = FEATURES[name].fill_null(f.cap if f.cap is not None else 0.0)
        if f.cap is not None:
            value = value.clip(upper_bound=f.cap)
        values.append(value.round(4).alias(f"_v_{name}"))
        contributions.append((pl.col(f"_v_{name}") * f.weight).round(4).alias(f"_c_{name}"))
    frame = frame.with_columns(values).with_columns(contributions)
    names = list(churn.features)
    z = pl.lit(churn.intercept) + pl.sum_horizontal([pl.col(f"_c_{n}") for n in names])
    risk = (1.0 / (1.0 + (-z).exp())).round(4)
    frame = frame.with_columns(risk.alias("churn_risk"))
    ranked = (
        frame.select(
            "person_id",
            *[
                pl.struct(
                    pl.lit(n).alias("feature"),
                    pl.col(f"_v_{n}").alias("value"),
                    pl.col(f"_c_{n}").alias("contribution"),
                ).alias(n)
                for n in names
            ],
        )
        .unpivot(index="person_id", value_name="driver")
        .unnest("driver")
        .filter(pl.col("contribution") > 0)
        .sort(["person_id", "contribution", "feature"], descending=[False, True, False])
        .group_by("person_id", maintain_order=True)
        .agg(pl.struct("feature", "value", "contribution").head(churn.top_features))
        .rename({"feature": "churn_drivers"})
    )
    frame = frame.join(ranked, on="person_id", how="left").with_columns(
        pl.col("churn_drivers").fill_null(pl.lit([], pl.List(DRIVER))).cast(pl.List(DRIVER))
    )
    ltv = cfg.lifetime_value
    exponent = 30.0 / churn.horizon_days
    survival = (1.0 - pl.col("churn_risk")).pow(exponent)
    # sum of s^m for m = 1..H, in closed form (s = 1 only when risk is 0)
    annuity = (
        pl.when(survival < 1.0)
        .then(survival * (1.0 - survival.pow(ltv.horizon_months)) / (1.0 - survival))
        .otherwise(float(ltv.horizon_months))
    )
    spend = pl.col("monthly_spend").cast(pl.Float64()).fill_null(0.0)
    frame = frame.with_columns(
        (spend * ltv.margin * annuity).round(2).cast(pl.Decimal(18, 2)).alias("lifetime_value")
    )
    helpers = [c for c in frame.columns if c.startswith("_")]
    return frame.drop(helpers)
