"""Trigger evaluation on stored and new profile rows (pipelines/profile/triggers.py): a person
fires when they start to match, once per window, only with the purpose's legal basis met and
never on a value they did not consent to; a time rule fires on the day the clock brings it in;
a bad trigger stops start-up naming the file, the trigger and the field."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from pipelines.config import PROJECT_ROOT, ConfigError, Settings, load_settings
from pipelines.profile.build import check_policy, profile_schema, to_arrow
from pipelines.profile.triggers import compile_triggers, fired

DAY = date(2026, 12, 7)
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _rows(settings: Settings, people: list[dict[str, Any]]) -> pl.DataFrame:
    """Profile rows: each person has a line (service holds) and what the test gives."""
    base = {"msisdns": ["998900000000"], "consent_service_granted": True}
    frame = pl.from_arrow(
        to_arrow(pl.DataFrame([{**base, **p} for p in people]), profile_schema(settings.policy))
    )
    assert isinstance(frame, pl.DataFrame)
    return frame


def _fired(
    settings: Settings,
    stored: list[dict[str, Any]],
    new: list[dict[str, Any]],
    day: date = DAY,
    stored_day: date | None = None,
) -> set[tuple[str, str, str]]:
    triggers = compile_triggers(settings, profile_schema(settings.policy), day, stored_day)
    events = fired(triggers, _rows(settings, stored), _rows(settings, new), NOW)
    out = set()
    for e in events:
        payload = json.loads(str(e["payload"]))
        assert e["event_id"] == f"trigger:{payload['trigger']}:{e['person_id']}:{payload['window']}"
        out.add((payload["trigger"], str(e["person_id"]), payload["window"]))
    return out


@pytest.fixture(scope="module")
def shipped() -> Settings:
    settings = load_settings(PROJECT_ROOT / "conf", env={})
    check_policy(settings)
    return settings


def test_a_person_fires_when_they_start_to_match_and_not_while_they_still_do(
    shipped: Settings,
) -> None:
    low, high = Decimal("1000.00"), Decimal("20000.00")
    stored = [
        {"person_id": "P1", "balance_total": high},
        {"person_id": "P2", "balance_total": low},
        {"person_id": "P3", "balance_total": high},
    ]
    new = [
        {"person_id": "P1", "balance_total": low},  # crossed: fires
        {"person_id": "P2", "balance_total": low},  # still below: nothing
        {"person_id": "P3", "balance_total": high},
        {"person_id": "P4", "balance_total": low},  # new person, below: fires
    ]
    assert _fired(shipped, stored, new) == {
        ("low_balance", "P1", "2026-12-07"),
        ("low_balance", "P4", "2026-12-07"),
    }


def test_a_value_the_person_did_not_consent_to_fires_nothing(shipped: Settings) -> None:
    """roaming_started reads last_region (location): only with location consent."""
    stored = [
        {"person_id": p, "last_region": "Tashkent", "consent_location_granted": g}
        for p, g in (("P1", True), ("P2", False))
    ]
    new = [{**r, "last_region": "Roaming Turkey"} for r in stored]
    assert _fired(shipped, stored, new) == {("roaming_started", "P1", "2026-12-07")}


def test_an_attribute_window_fires_once_per_value(shipped: Settings) -> None:
    first = datetime(2026, 12, 6, 9, tzinfo=UTC)
    second = datetime(2026, 12, 7, 9, tzinfo=UTC)
    row = {"person_id": "P1", "last_sim_swap_msisdn": "998900000000"}
    assert _fired(shipped, [row], [{**row, "last_sim_swap_ts": first}]) == {
        ("sim_swapped", "P1", first.isoformat())
    }
    assert (
        _fired(shipped, [{**row, "last_sim_swap_ts": first}], [{**row, "last_sim_swap_ts": first}])
        == set()
    )
    assert _fired(
        shipped, [{**row, "last_sim_swap_ts": first}], [{**row, "last_sim_swap_ts": second}]
    ) == {("sim_swapped", "P1", second.isoformat())}


def test_a_time_rule_fires_on_the_day_the_clock_brings_it_in(shipped: Settings) -> None:
    """contract_ending: within the next 30 days of the clock day. The same row, stored the
    day before the end came within 30 days, fires the day it does; not again after."""
    end = datetime(2027, 1, 5, 10, tzinfo=UTC)  # within 30 days of 2026-12-07, not of 12-06
    row = {"person_id": "P1", "contract_end_ts": end, "consent_marketing_granted": True}
    silent = {**row, "person_id": "P2", "consent_marketing_granted": False}
    day_before = DAY - timedelta(days=1)
    assert _fired(shipped, [row, silent], [row, silent], DAY, day_before) == {
        ("contract_ending", "P1", end.isoformat())
    }
    assert _fired(shipped, [row], [row], DAY + timedelta(days=1), DAY) == set()


def test_the_bundle_fires_once_per_calendar_month(shipped: Settings) -> None:
    stored = [{"person_id": "P1", "data_bundle_used": 0.5}]
    new = [{"person_id": "P1", "data_bundle_used": 0.9}]
    assert _fired(shipped, stored, new) == {("bundle_80", "P1", "2026-12")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"when": {"attr": "balance", "op": "<", "value": 1}},
            "triggers.t.when.attr: unknown attribute 'balance'",
        ),
        (
            {"when": {"attr": "balance_total", "op": "<", "value": "low"}},
            "triggers.t.when.value: expected a number",
        ),
        ({"purpose": "billing"}, "triggers.t.purpose: unknown purpose 'billing'"),
        (
            {"fields": ["last_region"]},
            "triggers.t.fields: 'last_region' is not an attribute the policy allows for service",
        ),
        ({"once_per": "year"}, "triggers.t.once_per: 'year' is not an attribute the policy allows"),
    ],
)
def test_a_bad_trigger_stops_start_up_naming_the_file_trigger_and_field(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    trigger = {"purpose": "service", "when": {"attr": "balance_total", "op": "<", "value": 1}}
    (conf / "triggers.yaml").write_text(yaml.safe_dump({"triggers": {"t": {**trigger, **change}}}))
    with pytest.raises(ConfigError) as err:
        check_policy(load_settings(conf, env={}))
    assert str(conf / "triggers.yaml") in str(err.value)
    assert message in str(err.value)
