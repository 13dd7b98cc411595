"""A billing schema migration: v2 renames `balance_after` to `balance` and adds
`loyalty_points`. Events of the new version sent before the contract lists it are quarantined
with the reason; once v2 is in the contract (v1 still active) both versions land, the renamed
field fills the old column, an undeclared field is reported as drift and alerted to the steward,
and the contract status says all of it. No event is lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipelines.config import ContractVersion, FieldSpec, Settings
from pipelines.ingest.stream import Ingestion
from pipelines.lakehouse.catalog import DRIFT, QUARANTINE
from pipelines.lakehouse.lake import Lake
from pipelines.ops.status import Alerts, contract_status
from tests.conftest import settings_for

pytestmark = [pytest.mark.spark]


def _with_v2(settings: Settings) -> Settings:
    billing = settings.contract("billing")
    v1 = billing.versions[0]
    types = {name: spec.model_copy(deep=True) for name, spec in v1.event_types.items()}
    payment = dict(types["payment"].fields)
    payment.pop("balance_after")
    payment["balance"] = FieldSpec(type="decimal", required=True, silver_column="balance_after")
    payment["loyalty_points"] = FieldSpec(type="integer")
    types["payment"] = types["payment"].model_copy(update={"fields": payment})
    v2 = ContractVersion(version=2, status="active", event_types=types)
    contracts = {**settings.contracts, "billing": billing.model_copy(update={"versions": [v1, v2]})}
    return settings.model_copy(update={"contracts": contracts})


def _payment(i: int, version: int, extra: dict[str, Any] | None = None) -> str:
    event: dict[str, Any] = {
        "event_id": f"bill-mig-{version}-{i:04d}",
        "source": "billing",
        "event_type": "payment",
        "event_ts": "2026-11-01T10:00:00Z",
        "schema_version": version,
        "msisdn": f"99890{i:07d}",
        "account_id": f"A{i:05d}",
        "amount": "1000.00",
        "currency": "UZS",
    }
    if version == 1:
        event["balance_after"] = f"{5000 + i}.00"
    else:
        event |= {"balance": f"{7000 + i}.00", "loyalty_points": 10 + i}
    return json.dumps(event | (extra or {}))


def _land(settings: Settings, name: str, lines: list[str]) -> None:
    folder: Path = settings.paths.landing_root / "billing"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(folder / f"{name}.jsonl")


def test_a_billing_migration_loses_nothing_and_reports_drift(spark: Any, tmp_path: Path) -> None:
    before = settings_for(tmp_path)
    lake = Lake(before.paths.lake_root)
    alerts = Alerts(before.database_url)

    # 1. billing starts sending v2 before the contract lists it
    _land(
        before, "billing-a", [_payment(i, 1) for i in range(5)] + [_payment(i, 2) for i in range(5)]
    )
    Ingestion(spark, before, lake).run(["billing"])
    q = lake.read_polars(QUARANTINE).filter(pl.col("source") == "billing")
    assert q.height == 5 and set(q["reason_code"]) == {"unknown_schema_version"}
    assert all(line is not None and '"schema_version": 2' in line for line in q["raw_line"])
    raised = alerts.raise_new(lake, before)
    assert [(a["kind"], a["steward"]) for a in raised] == [
        ("quarantine_rate", "billing-steward@operator.example")
    ]

    # 2. the steward publishes v2 (v1 stays active during the migration); v2 senders also
    #    add a field nobody declared
    after = _with_v2(before)
    _land(
        after,
        "billing-b",
        [_payment(i, 1) for i in range(5, 10)]
        + [_payment(i, 2, {"promo_code": "BLACKFRIDAY"}) for i in range(5, 10)],
    )
    Ingestion(spark, after, lake).run(["billing"])

    bronze = lake.read_polars("bronze.billing")
    silver = lake.read_polars("silver.billing")
    quarantined = lake.read_polars(QUARANTINE).filter(pl.col("source") == "billing")
    assert bronze.height == 20 == silver.height + quarantined.height  # nothing lost
    v2 = silver.filter(pl.col("schema_version") == 2).sort("event_id")
    assert v2.height == 5
    assert [float(x) for x in v2["balance_after"]] == [7005.0, 7006.0, 7007.0, 7008.0, 7009.0]
    assert v2["loyalty_points"].to_list() == [15, 16, 17, 18, 19]
    v1 = silver.filter(pl.col("schema_version") == 1)
    assert v1.height == 10 and v1["balance_after"].null_count() == 0
    assert v1["loyalty_points"].null_count() == 10

    drift = lake.read_polars(DRIFT).filter(pl.col("source") == "billing")
    assert drift["field"].to_list() == ["promo_code"]

    raised = alerts.raise_new(lake, after)
    drift_alerts = [a for a in raised if a["kind"] == "schema_drift"]
    assert [(a["subject"], a["steward"]) for a in drift_alerts] == [
        ("promo_code", "billing-steward@operator.example")
    ]
    assert "promo_code" in drift_alerts[0]["detail"]["message"]
    assert alerts.raise_new(lake, after) == []  # a field is alerted once

    status = {c.source: c for c in contract_status(lake, after, datetime.now(UTC))}["billing"]
    assert status.versions == [
        {"version": 1, "status": "active"},
        {"version": 2, "status": "active"},
    ]
    assert status.versions_seen_last_day == {"1": 10, "2": 5}
    assert status.quarantined_last_day == {"unknown_schema_version": 5}
    assert status.rows_in_last_day == 20
    assert [f.field for f in status.drift] == ["promo_code"]
    assert status.drift[0].example_event_id.startswith("bill-mig-2-")
    assert status.steward_email == "billing-steward@operator.example"
