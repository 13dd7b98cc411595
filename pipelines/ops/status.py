"""What stewards ask without an engineer: each source's contract and health (rows in, quarantine
by reason, schema drift, versions seen), the SLAs measured now, and alerts addressed to the
steward when a source starts sending an unknown field or its quarantine rate breaks its SLA.

Alerts are rows of the operational database (one per source, kind and subject, so a field is
alerted once); the deliverer logs each as an ops event, which the event API delivers to
stewards' subscriptions."""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import JSON, Column, DateTime, String, Table, select

from pipelines.config import Settings
from pipelines.lakehouse.catalog import DRIFT, PROFILES, QUARANTINE, silver_table
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.health import gold_waiting
from pipelines.ops.store import jsonable, metadata, ops_engine

DAY = timedelta(days=1)

alerts_table = Table(
    "alerts",
    metadata,
    Column("alert_id", String(40), primary_key=True),
    Column("raised_at", DateTime(timezone=True), nullable=False, index=True),
    Column("source", String(40), nullable=False, index=True),
    Column("kind", String(40), nullable=False),  # schema_drift | quarantine_rate | gate_held
    Column("subject", String(200), nullable=False),  # the field, or the day of the breach
    Column("steward", String(200), nullable=False),  # email the alert is addressed to
    Column("detail", JSON, nullable=False),
)


@dataclass(frozen=True)
class GateHold:
    """Why the promotion gate holds a source, and the silver version gold may read of it."""

    failures: list[str]
    until: int


def _gate_file(settings: Settings) -> Path:
    return settings.paths.lake_root.parent / "quality" / "gate.json"


def gate_state(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per source, as the last gate left it: held or not, since when, why."""
    path = _gate_file(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def record_gate(settings: Settings, held: dict[str, GateHold], now: datetime) -> None:
    """Write the gate's verdict per source; a hold keeps the time it started while it lasts."""
    before = gate_state(settings)
    state: dict[str, dict[str, Any]] = {}
    for s in settings.sources:
        hold = held.get(s)
        if hold is None:
            state[s] = {"held": False, "since": None, "failures": [], "until": None}
            continue
        since = before.get(s, {}).get("since") if before.get(s, {}).get("held") else None
        state[s] = {
            "held": True,
            "since": since or now.isoformat(),
            "failures": hold.failures,
            "until": hold.until,
        }
    if state == before:
        return
    path = _gate_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)  # readers (contract status, the API) never see half a file


@dataclass
class DriftField:
    field: str
    events: int
    first_seen: datetime
    last_seen: datetime
    example_event_id: str
    event_types: list[str]


@dataclass
class ContractStatus:
    source: str
    steward: str
    steward_email: str
    consumers: list[str]
    versions: list[dict[str, Any]]  # {version, status}
    rows_in_last_day: int
    quarantined_last_day: dict[str, int]  # reason code -> rows
    quarantine_rate: float
    max_quarantine_rate: float
    versions_seen_last_day: dict[str, int]  # schema version -> valid rows
    drift: list[DriftField] = field(default_factory=list)
    held: bool = False  # the promotion gate holds this source's rows back from gold
    held_since: str | None = None
    held_because: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _last_day(
    lake: LakeReader, table: str, column: str, since: datetime, cols: list[str]
) -> pl.DataFrame:
    if not lake.exists(table):
        return pl.DataFrame({c: [] for c in cols})
    return lake.read_polars(table, cols, pl.col(column) >= since)


def contract_status(
    lake: LakeReader, settings: Settings, now: datetime | None = None
) -> list[ContractStatus]:
    """Per source: the contract, rows in and quarantined (by reason) over the last day, the
    schema versions seen, and every unknown field seen since the source started."""
    now = now or datetime.now(UTC)
    since = now - DAY
    quarantine = _last_day(lake, QUARANTINE, "ingest_ts", since, ["source", "reason_code"])
    drift = (
        lake.read_polars(DRIFT)
        if lake.exists(DRIFT)
        else pl.DataFrame(schema={"source": pl.String, "field": pl.String})
    )
    gate = gate_state(settings)
    out = []
    for s in settings.sources:
        contract = settings.contract(s)
        hold = gate.get(s, {})
        valid = _last_day(lake, silver_table(contract), "_ingest_ts", since, ["schema_version"])
        q = quarantine.filter(pl.col("source") == s)
        by_reason = dict(q.group_by("reason_code").len().sort("reason_code").iter_rows())
        rows_in = valid.height + q.height
        seen = dict(valid.group_by("schema_version").len().sort("schema_version").iter_rows())
        fields = []
        d = drift.filter(pl.col("source") == s)
        if d.height:
            per_field = (
                d.group_by("field")
                .agg(
                    pl.col("events").sum(),
                    pl.col("first_seen").min(),
                    pl.col("last_seen").max(),
                    pl.col("example_event_id").sort_by("first_seen").first(),
                    pl.col("event_types").explode().unique().sort(),
                )
                .sort("first_seen")
            )
            fields = [DriftField(**row) for row in per_field.iter_rows(named=True)]
        out.append(
            ContractStatus(
                source=s,
                steward=contract.steward.name,
                steward_email=contract.steward.email,
                consumers=list(contract.consumers),
                versions=[{"version": v.version, "status": v.status} for v in contract.versions],
                rows_in_last_day=rows_in,
                quarantined_last_day=by_reason,
                quarantine_rate=round(q.height / rows_in, 4) if rows_in else 0.0,
                max_quarantine_rate=settings.sla.max_quarantine_rate(s),
                versions_seen_last_day={str(k): v for k, v in seen.items()},
                drift=fields,
                held=bool(hold.get("held")),
                held_since=hold.get("since"),
                held_because=list(hold.get("failures") or []),
            )
        )
    return out


@dataclass
class SlaResult:
    sla: str  # freshness | end_to_end_lag | quarantine_rate | api_p99
    subject: str  # table, source or route
    measured: float | None
    limit: float
    unit: str
    ok: bool
    detail: str = ""


def _newest(lake: LakeReader, table: str) -> datetime | None:
    """The table's newest event time, read once per table version: the data clock and each
    table's freshness (for every table Dagster reports on) ask for the same silver tables."""
    version = lake.version(table)
    return None if version is None else _newest_at(str(lake.root), table, version)


@lru_cache(maxsize=256)
def _newest_at(root: str, table: str, version: int) -> datetime | None:
    column = "last_event_ts" if table == PROFILES else "event_ts"
    rows = LakeReader(root).read_polars(table, [column], version=version)
    value = rows.select(pl.col(column).max()).item()
    return value if isinstance(value, datetime) else None


def data_clock(lake: LakeReader, settings: Settings, now: datetime | None = None) -> datetime:
    """What freshness is measured against: now, with `profile.clock: wall_clock`; with the
    event-time clock (replays, backfills, a generated operator) the newest event any source has
    sent (never past now), so a table is stale when it lags the data, not when the data is old."""
    now = now or datetime.now(UTC)
    if settings.profile.clock == "wall_clock":
        return now
    seen = [_newest(lake, silver_table(settings.contract(s))) for s in settings.sources]
    newest = [t for t in seen if t is not None]
    return min(max(newest), now) if newest else now


def freshness_lag_minutes(newest: datetime, clock: datetime) -> float:
    """How far a table's newest event is behind the clock, in minutes."""
    return round((clock - newest).total_seconds() / 60, 1)


def freshness_status(
    lake: LakeReader, settings: Settings, now: datetime | None = None
) -> list[SlaResult]:
    """Each table's freshness SLA: its newest event against the data clock (`data_clock`)."""
    now = now or datetime.now(UTC)
    clock = data_clock(lake, settings, now)
    against = "now" if clock == now else f"the newest event of any source, {clock.isoformat()}"
    out: list[SlaResult] = []
    for table, limit in settings.sla.freshness_minutes.items():
        newest = _newest(lake, table)
        lag = None if newest is None else freshness_lag_minutes(newest, clock)
        out.append(
            SlaResult(
                "freshness",
                table,
                lag,
                limit,
                "minutes",
                lag is not None and lag <= limit,
                f"newest event {newest.isoformat()}, against {against}"
                if newest
                else "no data yet",
            )
        )
    return out


def sla_status(
    lake: LakeReader,
    settings: Settings,
    api_p99_ms: float | None = None,
    now: datetime | None = None,
) -> list[SlaResult]:
    """Every SLA in conf/sla.yaml measured now: freshness (`freshness_status`); end-to-end lag
    is how long the oldest silver row still waiting for gold has waited (0 when gold is caught
    up)."""
    now = now or datetime.now(UTC)
    sla = settings.sla
    out = freshness_status(lake, settings, now)
    waiting = [h.oldest_s for h in gold_waiting(lake, settings, now) if h.waiting and h.oldest_s]
    lag_s = max(waiting, default=0.0)
    out.append(
        SlaResult(
            "end_to_end_lag",
            "silver -> gold",
            round(lag_s, 1),
            sla.end_to_end_lag_s,
            "seconds",
            lag_s <= sla.end_to_end_lag_s,
            "rows waiting for promotion" if waiting else "gold is caught up",
        )
    )
    for c in contract_status(lake, settings, now):
        out.append(
            SlaResult(
                "quarantine_rate",
                c.source,
                c.quarantine_rate,
                c.max_quarantine_rate,
                "ratio",
                c.quarantine_rate <= c.max_quarantine_rate,
                f"{sum(c.quarantined_last_day.values())} of {c.rows_in_last_day} lines in the "
                "last day",
            )
        )
    from pipelines.ops.retention import retention_status  # it measures with data_clock

    for r in retention_status(lake, settings, now):
        out.append(
            SlaResult(
                "retention",
                r.table,
                r.oldest_days,
                r.days,
                "days",
                r.ok,
                f"oldest {r.column} {r.oldest:%Y-%m-%d %H:%M} by the {r.clock}"
                if r.oldest
                else "no rows",
            )
        )
    out.append(
        SlaResult(
            "api_p99",
            "GET /v1/profiles/{id_type}/{id_value}",
            api_p99_ms,
            sla.api_p99_ms,
            "ms",
            api_p99_ms is None or api_p99_ms <= sla.api_p99_ms,
            "this API process since start" if api_p99_ms is not None else "no lookups yet",
        )
    )
    return out


class Alerts:
    """Alerts for stewards, stored once per source, kind and subject. This is the one writer of
    the alerts table; the deliverer logs each new alert as an ops event (pipelines.activation
    .delivery), so `ops.outbox` keeps gold as its one writer."""

    def __init__(self, url: str) -> None:
        self.engine = ops_engine(url)

    def raise_new(
        self, lake: LakeReader, settings: Settings, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Alert every unknown field not alerted before, every source over its quarantine SLA
        today and every source held at the gate; returns the alerts not raised before."""
        now = now or datetime.now(UTC)
        candidates = [
            alert for c in contract_status(lake, settings, now) for alert in _candidates(c, now)
        ]
        return self.record(candidates, now)

    def record(self, candidates: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """Store the alerts (source, kind, subject, steward, detail) not stored before."""
        new: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            known = {
                (r.source, r.kind, r.subject)
                for r in conn.execute(
                    select(alerts_table.c.source, alerts_table.c.kind, alerts_table.c.subject)
                )
            }
            for alert in candidates:
                key = (alert["source"], alert["kind"], alert["subject"])
                if key in known:
                    continue
                known.add(key)
                row = {"alert_id": uuid.uuid4().hex, "raised_at": now, **alert}
                conn.execute(alerts_table.insert(), [row])
                new.append(row)
        return new

    def list(self, source: str | None = None) -> list[dict[str, Any]]:
        q = select(alerts_table).order_by(alerts_table.c.raised_at.desc())
        if source:
            q = q.where(alerts_table.c.source == source)
        with self.engine.connect() as conn:
            return [jsonable(r._mapping) for r in conn.execute(q)]


def _candidates(c: ContractStatus, now: datetime) -> list[dict[str, Any]]:
    """What a source's contract status calls for: drift, a quarantine breach, a gate hold."""
    out = [
        {
            "kind": "schema_drift",
            "subject": f.field,
            "detail": {
                "field": f.field,
                "first_seen": f.first_seen.isoformat(),
                "events": f.events,
                "example_event_id": f.example_event_id,
                "event_types": f.event_types,
                "message": f"{c.source} sends field {f.field!r} in "
                f"{', '.join(f.event_types)} events; contract "
                f"v{max(v['version'] for v in c.versions)} does not list it there",
            },
        }
        for f in c.drift
    ]
    if c.rows_in_last_day and c.quarantine_rate > c.max_quarantine_rate:
        out.append(
            {
                "kind": "quarantine_rate",
                "subject": now.date().isoformat(),
                "detail": {
                    "rate": c.quarantine_rate,
                    "limit": c.max_quarantine_rate,
                    "by_reason": c.quarantined_last_day,
                    "message": f"{c.source} quarantined {c.quarantine_rate:.1%} of its "
                    f"lines in the last day (SLA {c.max_quarantine_rate:.1%})",
                },
            }
        )
    if c.held and c.held_since:
        out.append(
            {
                "kind": "gate_held",
                "subject": c.held_since,
                "detail": {
                    "since": c.held_since,
                    "failures": c.held_because,
                    "message": f"{c.source} is held at the quality gate: its new rows "
                    "do not reach gold (the other sources go on). Fix the source, or "
                    f"review and release them: cdp quality release silver.{c.source}",
                },
            }
        )
    return [{"source": c.source, "steward": c.steward_email, **a} for a in out]


def ops_event(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert as an event of the log (the outbox's fields): `ops.<kind>`, for stewards."""
    return {
        "event_id": f"alert-{alert['alert_id']}",
        "event_type": f"ops.{alert['kind']}",
        "person_id": None,
        "related_person_id": None,
        "payload": json.dumps({**alert, "raised_at": alert["raised_at"].isoformat()}, default=str),
        "occurred_at": alert["raised_at"],
    }
