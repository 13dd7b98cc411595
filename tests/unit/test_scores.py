"""Churn risk and lifetime value follow the documented formulas: a logistic of the weighted,
capped features; the drivers are the largest positive contributions; LTV discounts the monthly
spend by the monthly survival the risk implies."""

from __future__ import annotations

import math
from decimal import Decimal

import polars as pl
import pytest

from pipelines.config import ScoresCfg
from pipelines.profile.scores import add_scores

pytestmark = pytest.mark.unit

CFG = ScoresCfg.model_validate(
    {
        "churn_risk": {
            "horizon_days": 90,
            "intercept": -2.0,
            "top_features": 2,
            "low_balance_below": 5000,
            "features": {
                "days_since_interaction": {"weight": 0.1, "cap": 30},
                "usage_drop": {"weight": 1.0},
                "no_payment_30d": {"weight": 0.5},
                "open_cases": {"weight": 0.4, "cap": 3},
                "low_balance": {"weight": 0.3},
                "app_user": {"weight": -0.6},
                "tenure_years": {"weight": -0.2, "cap": 5},
            },
        },
        "lifetime_value": {"margin": 0.5, "horizon_months": 12},
    }
)


def _person(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "person_id": "P1",
        "_days_since_interaction": 3,
        "data_bytes_7d": 3_500,
        "data_bytes_30d": 60_000,  # daily 500 this week vs 2000 over the month: drop 0.75
        "payments_30d": 0,
        "open_cases": 5,  # capped at 3
        "balance_total": Decimal("100.00"),
        "app_user_ids": ["u1"],
        "_tenure_days": 730,  # 730 / 365.25 years
        "monthly_spend": Decimal("10000.00"),
    }
    row.update(overrides)
    return row


def _scored(*rows: dict[str, object]) -> list[dict[str, object]]:
    frame = pl.DataFrame(list(rows)).with_columns(
        pl.col("balance_total").cast(pl.Decimal(18, 2)),
        pl.col("monthly_spend").cast(pl.Decimal(18, 2)),
    )
    return add_scores(frame, CFG, 7, 30).to_dicts()


def test_risk_is_the_logistic_of_the_weighted_capped_features() -> None:
    (got,) = _scored(_person())
    tenure = round(730 / 365.25, 4)
    z = -2.0 + 0.1 * 3 + 1.0 * 0.75 + 0.5 * 1 + 0.4 * 3 + 0.3 * 1 - 0.6 * 1 - 0.2 * tenure
    assert got["churn_risk"] == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-4)
    # the two largest positive contributions, largest first
    assert [d["feature"] for d in got["churn_drivers"]] == ["open_cases", "usage_drop"]
    assert got["churn_drivers"][0]["value"] == 3.0
    assert got["churn_drivers"][0]["contribution"] == pytest.approx(1.2)


def test_never_interacted_counts_as_the_cap_and_risk_stays_in_range() -> None:
    quiet, busy = _scored(
        _person(_days_since_interaction=None, data_bytes_30d=0, data_bytes_7d=0),
        _person(person_id="P2", open_cases=0, payments_30d=4, balance_total=Decimal("9e6")),
    )
    assert quiet["churn_drivers"][0]["feature"] == "days_since_interaction"
    assert quiet["churn_drivers"][0]["value"] == 30.0
    assert 0.0 < busy["churn_risk"] < quiet["churn_risk"] < 1.0


def test_lifetime_value_discounts_spend_by_monthly_survival() -> None:
    (got,) = _scored(_person())
    s = (1 - got["churn_risk"]) ** (30 / 90)
    expected = 10000 * 0.5 * sum(s**m for m in range(1, 13))
    assert float(got["lifetime_value"]) == pytest.approx(expected, abs=0.01)
    (broke,) = _scored(_person(monthly_spend=Decimal("0")))
    assert broke["lifetime_value"] == Decimal("0.00")
