"""Real-time triggers (conf/triggers.yaml), evaluated where each gold refresh diffs a group of
persons' new profiles with the stored ones, so they leave in the same micro-batch as the change.

A trigger fires for a person when their profile starts to match its rule (the segment rule
language, with its consent semantics: a value the person did not consent to never decides) and
the legal basis of the trigger's purpose is met for them. It fires at most once per window: the
event id is the trigger, the person and the window (the clock's day, ISO week or month, or the
value of an attribute, such as a contract end or a SIM swap's time), so a rerun, a replay or a
second crossing inside the window yields the same id, which the event log keeps once.

"Starts to match" compares the stored profile, judged as of the day it was built, with the new
one judged as of the new clock day, so a rule on time ("contract ends within 30 days") fires on
the day the clock brings it in, not on every rebuild after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from pipelines.config import ConfigError, Settings
from pipelines.profile.rules import Compiled, RuleCompiler, RuleError, basis_met

EVENT_TYPE = "trigger.fired"
CALENDAR = ("day", "week", "month")


@dataclass(frozen=True)
class Trigger:
    """One trigger compiled for a refresh: its rule as of the stored profiles' day (`before`)
    and as of the new clock day (`after`, with the purpose's basis)."""

    name: str
    purpose: str
    before: Compiled
    after: Compiled
    once_per: str
    fields: tuple[str, ...]
    window: str  # the clock's calendar window, when once_per is one


def check_triggers(settings: Settings, schema: pa.Schema) -> None:
    """Refuse a trigger whose rule does not compile against the policy and gold schema, naming
    the trigger and the rule node."""
    compiler = RuleCompiler(settings.policy, schema)
    for name, trigger in settings.triggers.items():
        try:
            compiler.compile(trigger.when)
        except RuleError as e:
            where = f"{settings.conf_dir / 'triggers.yaml'}: triggers.{name}.when"
            raise ConfigError(f"{where}{e.path.removeprefix('rule')}: {e.message}") from None


def calendar_window(once_per: str, day: date) -> str:
    if once_per == "day":
        return day.isoformat()
    if once_per == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def compile_triggers(
    settings: Settings, schema: pa.Schema, day: date, stored_day: date | None
) -> list[Trigger]:
    """Every configured trigger, compiled for a refresh on clock day `day` of profiles stored
    as of `stored_day` (None: the same day)."""
    compiler = RuleCompiler(settings.policy, schema)
    now = datetime.combine(day, time(), UTC)
    then = datetime.combine(stored_day or day, time(), UTC)
    out = []
    for name, t in settings.triggers.items():
        after = compiler.compile(t.when, now)
        basis = basis_met([t.purpose], schema)
        out.append(
            Trigger(
                name,
                t.purpose,
                compiler.compile(t.when, then),
                Compiled(f"({after.sql} AND {basis})", after.params, after.attributes),
                t.once_per,
                tuple(t.fields),
                calendar_window(t.once_per, day) if t.once_per in CALENDAR else "",
            )
        )
    return out


def fired(
    triggers: list[Trigger], stored: pl.DataFrame, new: pl.DataFrame, now: datetime
) -> list[dict[str, object]]:
    """The outbox rows of the triggers `new` profiles fire against the `stored` ones (a person
    without a stored profile starts from matching nothing)."""
    if not triggers or new.is_empty():
        return []
    db = duckdb.connect()
    try:
        db.register("new_rows", new.to_arrow())
        db.register("old_rows", stored.to_arrow())
        events = []
        for t in triggers:
            events += _fired(db, t, now, has_stored=not stored.is_empty())
        return events
    finally:
        db.close()


def _fired(
    db: duckdb.DuckDBPyConnection, t: Trigger, now: datetime, has_stored: bool
) -> list[dict[str, object]]:
    keyed = t.once_per not in CALENDAR
    key = f'"{t.once_per}"' if keyed else "NULL"  # an attribute the policy lists (checked)
    carried = "".join(f', "{f}"' for f in t.fields)
    matched = db.execute(
        f"SELECT person_id, {key} AS _key{carried} FROM new_rows WHERE {t.after.sql}",
        t.after.params,
    ).fetchall()
    if not matched:
        return []
    before: dict[str, Any] = {}
    if has_stored:
        before = dict(
            db.execute(
                f"SELECT person_id, {key} FROM old_rows WHERE {t.before.sql}", t.before.params
            ).fetchall()
        )
    out = []
    for person, value, *values in matched:
        if person in before and (not keyed or before[person] == value):
            continue  # matched already, in this window
        window = _text(value) if keyed else t.window
        payload = {
            "trigger": t.name,
            "purpose": t.purpose,
            "window": window,
            "attributes": {f: _text(v) for f, v in zip(t.fields, values, strict=True)},
        }
        out.append(
            {
                "event_id": f"trigger:{t.name}:{person}:{window}",
                "event_type": EVENT_TYPE,
                "person_id": person,
                "related_person_id": None,
                "profile_version": None,
                "payload": json.dumps(payload, default=str, sort_keys=True),
                "occurred_at": now,
            }
        )
    return out


def _text(value: Any) -> Any:
    """A value as the event carries it: times in ISO-8601, decimals as strings."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
