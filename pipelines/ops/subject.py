"""Right of access: everything the platform holds about one person, in every layer, as one JSON
document (and a readable page): their identifiers with tenures (identity map), the profile,
every event of theirs in silver (by an identifier of theirs inside its tenure: a recycled
number's other owners are left out), their consent history, merges and splits, segment
memberships, and the pushes and lookups that involved them (ops store, under their id or an id
merged into it). Read without a JVM, for the API and the CLI."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl

from pipelines.config import IDENTIFIER_TYPES, Settings
from pipelines.lakehouse.catalog import MAP, MERGES, PROFILES, silver_table
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.pages import page, table
from pipelines.profile.state import merged_into, person_at, person_of

if TYPE_CHECKING:
    from pipelines.activation.push import PushStore
    from pipelines.ops.audit import AuditLog

HIDDEN = ("_file", "_unknown_fields")  # lake bookkeeping, not data about the person


@dataclass(frozen=True)
class Tenure:
    """An identifier of the person over [since, until) (None: open-ended)."""

    id_type: str
    id_value: str
    since: datetime | None
    until: datetime | None


def holder_at(lake: LakeReader, id_type: str, value: str, at: datetime | None = None) -> str | None:
    """Who held the identifier at `at` (default: now, else its last holder): the person a
    request about that identifier is about. A recycled number's other owners are not."""
    return person_of(lake, id_type, value) if at is None else person_at(lake, id_type, value, at)


def tenures(lake: LakeReader, person_id: str) -> tuple[list[dict[str, Any]], list[Tenure]]:
    """The person's identity-map rows, and each identifier's tenure."""
    if not lake.exists(MAP):
        return [], []
    rows = lake.read_polars(MAP, None, pl.col("person_id") == person_id).sort(
        ["id_type", "id_value", "tenure"]
    )
    held = [
        Tenure(r["id_type"], r["id_value"], r["tenure"], r["valid_to"])
        for r in rows.iter_rows(named=True)
    ]
    return rows.to_dicts(), held


def _theirs(columns: set[str], held: list[Tenure]) -> pl.Expr | None:
    """Rows carrying one of `held`'s identifiers, with the event inside that tenure."""
    conditions = []
    for t in held:
        if t.id_type not in columns:
            continue
        c = pl.col(t.id_type) == t.id_value
        if t.since is not None:
            c &= pl.col("event_ts") >= t.since
        if t.until is not None:
            c &= pl.col("event_ts") < t.until
        conditions.append(c)
    if not conditions:
        return None
    out = conditions[0]
    for c in conditions[1:]:
        out |= c
    return out


def events_of(lake: LakeReader, settings: Settings, held: list[Tenure]) -> dict[str, list[Any]]:
    """Per source: the person's silver events, oldest first."""
    out: dict[str, list[Any]] = {}
    for s in settings.sources:
        table = silver_table(settings.contract(s))
        if not lake.exists(table):
            continue
        names = {f.name for f in lake.arrow_schema(table)}
        where = _theirs(names & set(IDENTIFIER_TYPES), held)
        if where is None:
            continue
        rows = lake.read_polars(table, None, where).drop([c for c in HIDDEN if c in names])
        out[s] = [_plain(r) for r in rows.sort(["event_ts", "event_id"]).iter_rows(named=True)]
    return out


def _plain(value: Any) -> Any:
    """A value as JSON holds it: times ISO-8601 with offset, decimals as strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def subject_export(
    lake: LakeReader,
    settings: Settings,
    person_id: str,
    audit: AuditLog,
    pushes: PushStore,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """Everything held about `person_id` (None: no such person in the identity map)."""
    rows, held = tenures(lake, person_id)
    if not rows:
        return None
    ids = [person_id, *merged_into(lake, person_id)]
    profile = None
    if lake.exists(PROFILES):
        found = lake.read_polars(PROFILES, None, pl.col("person_id") == person_id).to_dicts()
        profile = _plain(found[0]) if found else None
    events = events_of(lake, settings, held)
    consent = [e for evs in events.values() for e in evs if e.get("event_type") == "consent"]
    merges = []
    if lake.exists(MERGES):
        involved = pl.col("from_person_id").is_in(ids) | pl.col("to_person_id").is_in(ids)
        merges = [_plain(r) for r in lake.read_polars(MERGES, None, involved).to_dicts()]
    audit.flush()
    return {
        "person_id": person_id,
        "merged_person_ids": ids[1:],
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "identifiers": [_plain(r) for r in rows],
        "profile": profile,
        "consent_history": consent,
        "events": events,
        "merges_and_splits": merges,
        "segment_memberships": pushes.memberships(ids),
        "pushes": [p for pid in ids for p in pushes.audit(pid)],
        "lookups": [r for pid in ids for r in audit.query(pid, None, None)],
    }


def render_html(doc: dict[str, Any]) -> str:
    """The export as a page a person can read: one section per part, a table per list."""
    esc = html.escape
    profile = [{"attribute": k, "value": v} for k, v in (doc["profile"] or {}).items()]
    parts = [
        f"<h1>Everything held about {esc(doc['person_id'])}</h1>",
        f"<p>Generated {esc(doc['generated_at'])}.</p>",
        f"<h2>Identifiers</h2>{table(doc['identifiers'])}",
        f"<h2>Profile</h2>{table(profile)}",
        f"<h2>Consent history</h2>{table(doc['consent_history'])}",
        *(f"<h2>Events: {esc(s)}</h2>{table(rows)}" for s, rows in doc["events"].items()),
        f"<h2>Merges and splits</h2>{table(doc['merges_and_splits'])}",
        f"<h2>Segment memberships</h2>{table(doc['segment_memberships'])}",
        f"<h2>Pushes to channels</h2>{table(doc['pushes'])}",
        f"<h2>Lookups by channels</h2>{table(doc['lookups'])}",
    ]
    return page("Personal data export", "".join(parts))
