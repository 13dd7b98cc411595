"""The event API's state in the operational database: the event log, subscriptions and the
delivery queues.

- The **event log** numbers every event subscribers may see (`seq`, the SSE stream's id): the
  outbox's segment-free change events (merges, splits, churn crossings, consent changes, ops
  alerts) and the segment membership events the deliverer computes. An event id is logged once.
- A **subscription** names event types, a filter and a signed webhook.
- **Deliveries** are messages in queues (`sub:<id>` per subscription, `push:<channel>` per
  channel endpoint). A queue is sent strictly in order, so events reach a subscriber in order
  per person; a failed message is retried with exponential backoff at the head of its queue,
  and after `max_attempts` it is parked as `dead` (the queue moves on) until redelivered.
- **Cursors** say how far the outbox, the segment evaluation and the fan-out have got; each
  moves in the same transaction as the rows it produced, so a crash repeats nothing and loses
  nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from pipelines.ops.store import metadata, ops_engine, utc

# Event types a subscription may name: the purpose an event discloses (None: identity and
# consent facts every channel needs to keep its own copy right; "segment", "trigger": the
# segment's or trigger's own purpose; "ops": steward and admin keys only), and the fields a
# filter may test.
EVENT_TYPES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "segment.entered": ("segment", ("segment_id", "segment_version", "purpose")),
    "segment.exited": ("segment", ("segment_id", "segment_version", "purpose")),
    "churn_risk.crossed": ("profiling", ("direction", "threshold")),
    "profile.merged": (None, ("into", "link_rule")),
    "profile.split": (None, ("new_person_id", "link_rule")),
    "consent.changed": (None, ("purpose", "granted", "source")),
    # A link the SIM-swap guard held back (possible takeover): for channels serving the line.
    "identity.suspicious_link": ("service", ("link_rule",)),
    # A conf/triggers.yaml trigger fired: the trigger's own purpose (`purpose` in the payload).
    "trigger.fired": ("trigger", ("trigger", "window", "purpose")),
    "ops.schema_drift": ("ops", ("source", "steward")),
    "ops.quarantine_rate": ("ops", ("source", "steward")),
    "ops.gate_held": ("ops", ("source", "steward")),
}

event_log = Table(
    "event_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(250), nullable=False, unique=True),
    Column("event_type", String(40), nullable=False),
    Column("person_id", String(40), index=True),
    Column("related_person_id", String(40)),
    Column("payload", Text, nullable=False),  # JSON text, as the outbox holds it
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("logged_at", DateTime(timezone=True), nullable=False),
    Index("event_log_type_seq", "event_type", "seq"),
)
cursors = Table(
    "event_cursors",
    metadata,
    Column("name", String(80), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("subscription_id", String(40), primary_key=True),
    Column("owner", String(40), nullable=False),  # key id
    Column("channel", String(100)),  # None: a steward or admin subscription (ops events)
    Column("event_types", JSON, nullable=False),
    Column("filter", JSON, nullable=False),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),  # signs deliveries; never returned by the API
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", String(120), nullable=False),
    Column("message_key", String(250), nullable=False),  # idempotency key (event id, push part)
    Column("person_id", String(40)),
    Column("body", Text, nullable=False),
    Column("status", String(12), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("event_at", DateTime(timezone=True), nullable=False),  # when the change happened
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("queue", "message_key"),
    Index("deliveries_queue_status", "queue", "status", "id"),
)


def insert_ignoring_duplicates(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, skipping those whose unique key is already stored (a replay after a crash
    between a send and its cursor's commit logs nothing twice)."""
    if not rows:
        return
    name = conn.dialect.name
    if name == "sqlite":
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)
    elif name == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:
        raise NotImplementedError(f"insert-or-ignore on {name}: use SQLite or PostgreSQL")


@dataclass(frozen=True)
class Event:
    """One logged event as subscribers receive it."""

    seq: int
    event_id: str
    event_type: str
    person_id: str | None
    related_person_id: str | None
    payload: dict[str, Any]
    occurred_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "person_id": self.person_id,
            "related_person_id": self.related_person_id,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    owner: str
    channel: str | None
    event_types: list[str]
    filter: dict[str, Any]
    url: str
    secret: str
    active: bool
    created_at: datetime

    @property
    def queue(self) -> str:
        return f"sub:{self.subscription_id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "channel": self.channel,
            "event_types": self.event_types,
            "filter": self.filter,
            "url": self.url,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
        }

    def matches(self, event: Event) -> bool:
        """The event is of a subscribed type and passes the filter (every named field equals
        the value, or one of the values)."""
        if event.event_type not in self.event_types:
            return False
        for name, wanted in self.filter.items():
            have = event.person_id if name == "person_id" else event.payload.get(name)
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if have not in allowed:
                return False
        return True


class FilterError(ValueError):
    """A subscription that names an unknown event type or filter field; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotForYouError(FilterError):
    """An event type the caller's key may not receive (a 403, not a malformed request)."""


FILTER_FIELDS = frozenset({"person_id", *(f for _, fs in EVENT_TYPES.values() for f in fs)})


def check_subscription(event_types: Sequence[str], filter_: dict[str, Any], ops: bool) -> None:
    """Refuse unknown types, types the caller may not receive (`ops`: steward or admin, who
    receive only ops events; channels the rest) and filter fields no event type has (a field
    only some subscribed types have filters those; the others never match it)."""
    if not event_types:
        raise FilterError("event_types", "name at least one event type")
    if len(set(event_types)) != len(event_types):
        raise FilterError("event_types", "name each event type once")
    for i, t in enumerate(event_types):
        if t not in EVENT_TYPES:
            raise FilterError(
                f"event_types[{i}]", f"unknown event type {t!r}; one of {sorted(EVENT_TYPES)}"
            )
        is_ops = EVENT_TYPES[t][0] == "ops"
        if is_ops != ops:
            who = "steward and admin keys" if is_ops else "channel keys"
            raise NotForYouError(f"event_types[{i}]", f"{t} is delivered to {who} only")
    for name, value in filter_.items():
        if name not in FILTER_FIELDS:
            raise FilterError(
                f"filter.{name}", f"not a field of any event type; one of {sorted(FILTER_FIELDS)}"
            )
        values = value if isinstance(value, list) else [value]
        if not values or not all(_filter_value(v) for v in values):
            raise FilterError(
                f"filter.{name}",
                "expected a value (a string of at most 200 characters, a number or a boolean) "
                "or a non-empty list of values",
            )


def _filter_value(v: Any) -> bool:
    return isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 200)


class EventStore:
    """The event log, cursors, subscriptions and delivery queues of one operational database."""

    def __init__(self, url: str) -> None:
        self.engine = ops_engine(url)

    # ------------------------------------------------------------ cursors and the log

    def cursor(self, name: str) -> int | None:
        with self.engine.connect() as conn:
            return _cursor(conn, name)

    def log(
        self,
        conn: Connection,
        rows: Iterable[dict[str, Any]],
        cursor: tuple[str, int] | None = None,
    ) -> None:
        """Append events (dicts with the outbox's fields) in order, ignoring ids already
        logged, and move `cursor` in the same transaction."""
        now = datetime.now(UTC)
        batch = [
            {
                "event_id": r["event_id"],
                "event_type": r["event_type"],
                "person_id": r.get("person_id"),
                "related_person_id": r.get("related_person_id"),
                "payload": r["payload"]
                if isinstance(r["payload"], str)
                else json.dumps(r["payload"], default=str, sort_keys=True),
                "occurred_at": r["occurred_at"],
                "logged_at": now,
            }
            for r in rows
        ]
        insert_ignoring_duplicates(conn, event_log, batch)
        if cursor is not None:
            set_cursor(conn, *cursor)

    def events_after(
        self,
        seq: int,
        limit: int = 1000,
        types: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[Event]:
        """Up to `limit` events after `seq` (up to `until`), of `types` if given, in order."""
        q = select(event_log).where(event_log.c.seq > seq)
        if until is not None:
            q = q.where(event_log.c.seq <= until)
        if types:
            q = q.where(event_log.c.event_type.in_(list(types)))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(event_log.c.seq).limit(limit)).mappings().all()
        return [_event(r) for r in rows]

    def head(self) -> int:
        """The newest event's seq (0 when the log is empty)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.max(event_log.c.seq))).scalar() or 0)

    # ------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        owner: str,
        channel: str | None,
        event_types: list[str],
        filter_: dict[str, Any],
        url: str,
        secret: str,
    ) -> Subscription:
        row = {
            "subscription_id": f"sub_{uuid.uuid4().hex[:16]}",
            "owner": owner,
            "channel": channel,
            "event_types": event_types,
            "filter": filter_,
            "url": url,
            "secret": secret,
            "active": True,
            "created_at": datetime.now(UTC),
        }
        with self.engine.begin() as conn:
            conn.execute(subscriptions.insert(), [row])
        return _subscription(row)

    def subscriptions(self, owner: str | None = None, active: bool = True) -> list[Subscription]:
        q = select(subscriptions).order_by(subscriptions.c.created_at)
        if owner is not None:
            q = q.where(subscriptions.c.owner == owner)
        if active:
            q = q.where(subscriptions.c.active)
        with self.engine.connect() as conn:
            return [_subscription(r) for r in conn.execute(q).mappings()]

    def subscription(self, subscription_id: str) -> Subscription | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
                )
                .mappings()
                .first()
            )
        return None if row is None else _subscription(row)

    def deactivate(self, subscription_id: str) -> None:
        """Stop a subscription: nothing new is queued for it and its pending messages go."""
        with self.engine.begin() as conn:
            conn.execute(
                update(subscriptions)
                .where(subscriptions.c.subscription_id == subscription_id)
                .values(active=False)
            )
            conn.execute(
                delete(deliveries).where(
                    (deliveries.c.queue == f"sub:{subscription_id}")
                    & (deliveries.c.status == "pending")
                )
            )

    # ------------------------------------------------------------ delivery queues

    def enqueue(
        self,
        conn: Connection,
        queue: str,
        messages: Iterable[tuple[str, str | None, str, datetime]],
    ) -> None:
        """Queue (message_key, person_id, body, event_at) messages at the tail of `queue`; a
        key already queued there is not queued again."""
        now = datetime.now(UTC)
        rows = [
            {
                "queue": queue,
                "message_key": key,
                "person_id": person,
                "body": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "event_at": at,
                "created_at": now,
            }
            for key, person, body, at in messages
        ]
        insert_ignoring_duplicates(conn, deliveries, rows)

    def due_queues(self, now: datetime) -> list[str]:
        """Queues whose oldest pending message may be sent now (a queue waits on its head)."""
        d = deliveries.c
        heads = (
            select(d.queue, func.min(d.id).label("head"))
            .where(d.status == "pending")
            .group_by(d.queue)
            .subquery()
        )
        q = select(heads.c.queue).join(deliveries, deliveries.c.id == heads.c.head)
        with self.engine.connect() as conn:
            return list(conn.execute(q.where(d.next_attempt_at <= now)).scalars())

    def batch(self, queue: str, limit: int) -> list[dict[str, Any]]:
        """The first `limit` pending messages of `queue`, in order."""
        d = deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries)
                .where((d.queue == queue) & (d.status == "pending"))
                .order_by(d.id)
                .limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def delivered(self, ids: list[int], at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(ids))
                .values(status="delivered", delivered_at=at, last_error=None)
            )

    def failed(
        self,
        ids: list[int],
        error: str,
        now: datetime,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
    ) -> int:
        """Count an attempt on each message; park those out of attempts, schedule the rest
        after an exponential backoff. Returns how many were parked."""
        d = deliveries.c
        with self.engine.begin() as conn:
            rows = conn.execute(select(d.id, d.attempts).where(d.id.in_(ids))).all()
            parked = 0
            for mid, attempts in rows:
                n = attempts + 1
                values: dict[str, Any] = {"attempts": n, "last_error": error[:1000]}
                if n >= max_attempts:
                    values["status"] = "dead"
                    parked += 1
                else:
                    delay = min(backoff_s * 2 ** (n - 1), backoff_max_s)
                    values["next_attempt_at"] = now + timedelta(seconds=delay)
                conn.execute(update(deliveries).where(d.id == mid).values(**values))
        return parked

    def messages(self, queue: str, status: str | None = None, limit: int = 100) -> list[dict]:
        """A queue's messages (newest first), e.g. its dead letters."""
        d = deliveries.c
        q = select(deliveries).where(d.queue == queue)
        if status:
            q = q.where(d.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(d.id.desc()).limit(limit)).mappings()
            return [_message(r) for r in rows]

    def redeliver(self, queue: str, ids: list[int] | None = None) -> int:
        """Put dead messages of `queue` (all, or `ids`) back to pending for immediate delivery.
        They were parked, so they arrive after messages sent meanwhile: receivers order by
        `seq` or `occurred_at`."""
        d = deliveries.c
        where = (d.queue == queue) & (d.status == "dead")
        if ids is not None:
            where = where & d.id.in_(ids)
        with self.engine.begin() as conn:
            done = conn.execute(
                update(deliveries)
                .where(where)
                .values(status="pending", attempts=0, next_attempt_at=datetime.now(UTC))
            )
        return int(done.rowcount or 0)

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: messages by status and the oldest pending message's event time."""
        d = deliveries.c
        stats: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for queue, status, n, oldest in conn.execute(
                select(d.queue, d.status, func.count(), func.min(d.event_at)).group_by(
                    d.queue, d.status
                )
            ):
                q = stats.setdefault(queue, {"pending": 0, "delivered": 0, "dead": 0})
                q[status] = n
                if status == "pending" and oldest is not None:
                    q["oldest_pending_at"] = utc(oldest)
        return stats

    def delivery_lag(self, quantiles: Sequence[float], last: int = 1000) -> dict[float, float]:
        """Quantiles of the seconds from change to acknowledged delivery over the `last`
        messages delivered (empty before any)."""
        d = deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d.event_at, d.delivered_at)
                .where(d.status == "delivered")
                .order_by(d.id.desc())
                .limit(last)
            ).all()
        lags = sorted((utc(done) - utc(at)).total_seconds() for at, done in rows if done)
        if not lags:
            return {}
        return {q: lags[min(len(lags) - 1, int(q * len(lags)))] for q in quantiles}

    def fired(self, trigger: str, now: datetime) -> dict[str, Any]:
        """How often a trigger fired (events logged) in the 24 hours and 7 days before `now`,
        and when it last did, in one query."""
        e = event_log.c
        day = func.sum(case((e.occurred_at >= now - timedelta(days=1), 1), else_=0))
        with self.engine.connect() as conn:
            n_day, n_week, last = conn.execute(
                select(day, func.count(), func.max(e.occurred_at)).where(
                    (e.event_type == "trigger.fired")
                    & e.event_id.startswith(f"trigger:{trigger}:", autoescape=True)
                    & (e.occurred_at >= now - timedelta(days=7))
                )
            ).one()
        return {
            "fired_24h": int(n_day or 0),
            "fired_7d": int(n_week),
            "last_fired": utc(last).isoformat() if last else None,
        }

    def message_status(self, queue: str, key_prefix: str) -> dict[str, int]:
        """Messages of `queue` whose key starts with `key_prefix`, by status (a push's parts)."""
        d = deliveries.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d.status, func.count())
                .where((d.queue == queue) & d.message_key.startswith(key_prefix, autoescape=True))
                .group_by(d.status)
            ).all()
        return {s: int(n) for s, n in rows}


def _cursor(conn: Connection, name: str) -> int | None:
    value = conn.execute(select(cursors.c.value).where(cursors.c.name == name)).scalar()
    return None if value is None else int(value)


def set_cursor(conn: Connection, name: str, value: int) -> None:
    if _cursor(conn, name) is None:
        conn.execute(cursors.insert(), [{"name": name, "value": value}])
    else:
        conn.execute(update(cursors).where(cursors.c.name == name).values(value=value))


def _event(row: Any) -> Event:
    return Event(
        seq=row["seq"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        person_id=row["person_id"],
        related_person_id=row["related_person_id"],
        payload=_payload(row["payload"]),
        occurred_at=utc(row["occurred_at"]),
    )


def _payload(text: str) -> dict[str, Any]:
    """The payload object; one that is not a JSON object is passed on as `{"raw": text}`
    rather than stopping delivery of every event behind it."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": value}


def _subscription(row: Any) -> Subscription:
    return Subscription(
        subscription_id=row["subscription_id"],
        owner=row["owner"],
        channel=row["channel"],
        event_types=list(row["event_types"]),
        filter=dict(row["filter"]),
        url=row["url"],
        secret=row["secret"],
        active=bool(row["active"]),
        created_at=utc(row["created_at"]),
    )


def _message(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "message_key", "person_id", "status", "attempts")}
    out["last_error"] = row["last_error"]
    for k in ("event_at", "created_at", "delivered_at", "next_attempt_at"):
        out[k] = utc(row[k]).isoformat() if row[k] is not None else None
    return out
