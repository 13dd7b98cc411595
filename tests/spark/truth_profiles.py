"""Expected profile values computed from the generator's landing files and ground truth with plain
Python, independently of pipelines.profile: which person each valid line belongs to comes from the
truth, and every value from the raw JSON the sources sent."""

from __future__ import annotations

import calendar
import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

VALID = ("valid", "schema_drift")  # drift lines are valid events with one extra field


@dataclass
class Truth:
    events: list[dict[str, Any]]  # parsed landing lines of valid events, with _person and _ts
    tenures: list[dict[str, Any]]
    accounts: dict[str, dict[str, Any]]
    persons: dict[str, dict[str, Any]]
    arrival: dict[str, int]  # event_id -> order in which its file was delivered


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def load_truth(landing: Path, truth: Path) -> Truth:
    rows = pq.read_table(truth / "events.parquet").to_pylist()
    files: dict[tuple[str, str], list[str]] = {}
    events = []
    arrival: dict[str, int] = {}
    for r in rows:
        if r["kind"] not in VALID:
            continue
        key = (r["source"], r["file"])
        if key not in files:
            files[key] = (landing / r["source"] / r["file"]).read_text().splitlines()
        rec = json.loads(files[key][r["line_no"] - 1])
        rec["_person"] = r["person_key"]
        rec["_ts"] = _ts(rec["event_ts"])
        events.append(rec)
        arrival[rec["event_id"]] = int(r["file"].rsplit("-", 1)[1].split(".")[0])
    return Truth(
        events=events,
        tenures=pq.read_table(truth / "tenures.parquet").to_pylist(),
        accounts={
            a["account_id"]: a for a in pq.read_table(truth / "accounts.parquet").to_pylist()
        },
        persons={p["person_key"]: p for p in pq.read_table(truth / "persons.parquet").to_pylist()},
        arrival=arrival,
    )


def _latest(evs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(evs, key=lambda e: (e["_ts"], e["event_id"])) if evs else None


@dataclass(frozen=True)
class _Spec:
    """What every expected profile is computed against: the clock day, the windows, the
    reference files and the policy's purposes and interactions."""

    day: date
    short_from: date
    long_from: date
    tariffs: dict[str, dict[str, str]]
    segments: list[dict[str, str]]
    purposes: dict[str, str]  # purpose -> legal basis
    interactions: dict[str, dict[str, str]]

    def in_window(self, e: dict[str, Any], start: date) -> bool:
        return start <= e["_ts"].date() <= self.day


def expected_profiles(
    truth: Truth,
    landing: Path,
    purposes: dict[str, str],  # purpose -> legal basis
    interactions: dict[str, dict[str, str]],
    short_days: int = 7,
    long_days: int = 30,
) -> tuple[date, dict[str, dict[str, Any]]]:
    """The clock day and, per truth person with a line, the profile the spec says they have."""
    day = max(e["_ts"] for e in truth.events).date()
    spec = _Spec(
        day,
        day - timedelta(days=short_days - 1),
        day - timedelta(days=long_days - 1),
        {r["tariff_id"]: r for r in csv.DictReader((landing / "reference" / "tariffs.csv").open())},
        list(csv.DictReader((landing / "reference" / "segments.csv").open())),
        purposes,
        interactions,
    )
    by_person: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in truth.events:
        if e["_person"]:
            by_person[e["_person"]].append(e)
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in truth.tenures:
        lines[t["person_key"]].append(t)
    return day, {
        person: _expected(truth, spec, person, tenures, by_person.get(person, []))
        for person, tenures in lines.items()
    }


def _expected(
    truth: Truth,
    spec: _Spec,
    person: str,
    tenures: list[dict[str, Any]],
    evs: list[dict[str, Any]],
) -> dict[str, Any]:
    """One person's expected profile from their tenures and events."""
    current = sorted(
        (t for t in tenures if t["valid_to"] is None),
        key=lambda t: (t["valid_from"], t["msisdn"]),
    )
    closed = sorted(
        (t for t in tenures if t["valid_to"] is not None), key=lambda t: t["valid_from"]
    )
    context = (current or closed)[0]
    p: dict[str, Any] = {
        "primary_msisdn": current[0]["msisdn"] if current else None,
        "msisdns": [t["msisdn"] for t in current],
        "account_id": context["account_id"],
        "account_type": truth.accounts[context["account_id"]]["account_type"],
        "account_role": context["role"],
    }
    p |= _identifiers(truth.persons[person], evs)
    p |= _balances_and_tariff(spec, current, evs)
    p |= _last_seen(spec, evs)
    p |= _cases(evs)
    p |= _windows(spec, evs)
    p |= _bundle_contract_and_swap(spec, current, evs)
    p |= _consents(spec, current, evs)
    return p


def _identifiers(info: dict[str, Any], evs: list[dict[str, Any]]) -> dict[str, Any]:
    app_user_ids = (
        [info["app_user_id"]]
        if any(e.get("app_user_id") == info["app_user_id"] for e in evs) and info["app_user_id"]
        else []
    )
    # Their own email, and a household email they share with another holder (a contact on
    # both profiles); a shop's email on many contracts is junk, on nobody's.
    own = [info["email"]] if info["email"] else []
    if info.get("contact_email") and "household_email" in (info.get("situations") or []):
        own.append(info["contact_email"])
    emails = sorted(x for x in own if any(e.get("email") == x for e in evs))
    return {"app_user_ids": app_user_ids, "emails": emails}


def _balances_and_tariff(
    spec: _Spec, current: list[dict[str, Any]], evs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The balance after the last payment of each current line's tenure; the first line's
    tariff."""
    balances = {}
    for t in current:
        pays = [
            e
            for e in evs
            if e["event_type"] == "payment"
            and e["msisdn"] == t["msisdn"]
            and e["_ts"] >= t["valid_from"]
        ]
        last = _latest(pays)
        if last:
            balances[t["msisdn"]] = Decimal(str(last["balance_after"]))
    tariff = spec.tariffs[current[0]["tariff_id"]] if current else None
    return {
        "balances": balances,
        "balance_total": sum(balances.values()) if balances else None,
        "tariff_id": tariff["tariff_id"] if tariff else None,
        "tariff_name": tariff["name"] if tariff else None,
        "tariff_monthly_fee": Decimal(tariff["monthly_fee"]) if tariff else None,
    }


def _add_months(ts: datetime, months: int) -> datetime:
    """The same day `months` later (the month's last day when it has fewer days)."""
    year, month = divmod(ts.month - 1 + months, 12)
    year += ts.year
    return ts.replace(
        year=year, month=month + 1, day=min(ts.day, calendar.monthrange(year, month + 1)[1])
    )


def _bundle_contract_and_swap(
    spec: _Spec, current: list[dict[str, Any]], evs: list[dict[str, Any]]
) -> dict[str, Any]:
    """The share of the primary line's tariff bundle used this calendar month, the end of its
    minimum term (counted from the event that set the tariff) and the person's last SIM swap."""
    tariff = spec.tariffs[current[0]["tariff_id"]] if current else None
    month = spec.day.replace(day=1)
    used = sum(
        int(e["bytes_up"]) + int(e["bytes_down"])
        for e in evs
        if e["event_type"] == "data_session_end" and spec.in_window(e, month)
    )
    bundle = float(tariff["data_gb"]) * 1e9 if tariff and tariff["data_gb"] else 0.0
    end = None
    if tariff and tariff.get("term_months"):
        primary = current[0]
        setting = _latest(
            [
                e
                for e in evs
                if e["event_type"] in ("activation", "ownership_change", "tariff_change")
                and e["msisdn"] == primary["msisdn"]
                and e["_ts"] >= primary["valid_from"]
            ]
        )
        end = _add_months(setting["_ts"], int(tariff["term_months"])) if setting else None
    swap = _latest([e for e in evs if e["event_type"] == "sim_swap"])
    return {
        "data_bundle_used": used / bundle if bundle else None,
        "contract_end_ts": end,
        "last_sim_swap_ts": swap["_ts"] if swap else None,
        "last_sim_swap_msisdn": swap["msisdn"] if swap else None,
    }


def _last_seen(spec: _Spec, evs: list[dict[str, Any]]) -> dict[str, Any]:
    touches = [e for e in evs if e["event_type"] in spec.interactions.get(e["source"], {})]
    touch = _latest(touches)
    where = _latest([e for e in evs if e["event_type"] == "location"])
    return {
        "last_interaction_ts": touch["_ts"] if touch else None,
        "last_interaction_channel": (
            spec.interactions[touch["source"]][touch["event_type"]] if touch else None
        ),
        "last_region": where["region"] if where else None,
        "last_region_ts": where["_ts"] if where else None,
        "last_event_ts": max(e["_ts"] for e in evs) if evs else None,
    }


def _cases(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """Cases whose latest event is open, and the earliest promise due on one of them."""
    cases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in evs:
        if e["event_type"] == "case":
            cases[e["case_id"]].append(e)
    open_ids = {c for c, ce in cases.items() if _latest(ce)["status"] == "open"}  # type: ignore[index]
    dues = [
        _ts(e["due_ts"])
        for e in evs
        if e["event_type"] == "promise_to_resolve" and e["case_id"] in open_ids
    ]
    return {"open_cases": len(open_ids), "next_promise_due_ts": min(dues) if dues else None}


def _windows(spec: _Spec, evs: list[dict[str, Any]]) -> dict[str, Any]:
    """Usage over the short and long windows, monthly spend and its value segment."""
    ends = [e for e in evs if e["event_type"] == "data_session_end"]
    pays = [e for e in evs if e["event_type"] == "payment"]
    opens = [e for e in evs if e["source"] == "app" and e["event_type"] == "open"]
    short, long = spec.short_from, spec.long_from
    spend = sum(
        (Decimal(str(e["amount"])) for e in pays if spec.in_window(e, long)), Decimal("0.00")
    )
    return {
        "data_bytes_7d": sum(
            int(e["bytes_up"]) + int(e["bytes_down"]) for e in ends if spec.in_window(e, short)
        ),
        "data_bytes_30d": sum(
            int(e["bytes_up"]) + int(e["bytes_down"]) for e in ends if spec.in_window(e, long)
        ),
        "data_sessions_7d": sum(1 for e in ends if spec.in_window(e, short)),
        "data_sessions_30d": sum(1 for e in ends if spec.in_window(e, long)),
        "payments_30d": sum(1 for e in pays if spec.in_window(e, long)),
        "payments_sum_30d": spend,
        "app_opens_7d": sum(1 for e in opens if spec.in_window(e, short)),
        "monthly_spend": spend,
        "value_segment": next(
            (
                s["segment_id"]
                for s in spec.segments
                if Decimal(s["min_monthly_spend"]) <= spend
                and (not s["max_monthly_spend"] or spend < Decimal(s["max_monthly_spend"]))
            ),
            None,
        ),
    }


def _consents(
    spec: _Spec, current: list[dict[str, Any]], evs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per purpose: a contract purpose holds while a line does; a consent purpose follows the
    person's latest consent event."""
    p: dict[str, Any] = {}
    for purpose, basis in spec.purposes.items():
        prefix = f"consent_{purpose}"
        if basis == "contract":
            p[f"{prefix}_granted"] = bool(current)
            p[f"{prefix}_since"] = current[0]["valid_from"] if current else None
            p[f"{prefix}_legal_basis"] = "contract" if current else None
            p[f"{prefix}_source"] = "contract" if current else None
            continue
        last = _latest([e for e in evs if e["event_type"] == "consent" and e["purpose"] == purpose])
        p[f"{prefix}_granted"] = bool(last and last["granted"] in (True, "true"))
        p[f"{prefix}_since"] = last["_ts"] if last else None
        p[f"{prefix}_legal_basis"] = last["legal_basis"] if last else None
        p[f"{prefix}_source"] = last.get("channel") if last else None
    return p
