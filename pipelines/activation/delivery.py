"""The deliverer: one process per data root (started by `cdp serve`, or `cdp deliver`; the one
holding the delivery lock works) that moves events from the lake to subscribers and pushes to
channels. It runs apart from the API workers so its work never holds their GIL, and reads the
profile columns it needs (person, rule attributes, consent) through a DuckDB view of gold.

Each step, in order:
1. **Log** the outbox's new subscribable events (`ops.outbox` Delta versions after the cursor)
   and the stewards' alerts not logged yet (ops events).
2. **Evaluate** every saved segment when the snapshot changed: members entering or leaving
   become `segment.entered` / `segment.exited` events.
3. **Fan out** new log events to the subscriptions whose types and filter match and that may
   see them: a channel receives an event only when it holds the event's purpose and the
   person's consent for it is in force in the current snapshot (identity and consent facts go
   to every channel; ops alerts to steward and admin subscriptions only).
4. **Send** every queue whose head is due: a subscription's events in batches, a push's parts
   one by one, each signed; a failure backs off, `max_attempts` failures park the message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import duckdb
import polars as pl
import pyarrow as pa
from sqlalchemy import exists, literal, select

from pipelines.activation.events import (
    EVENT_TYPES,
    Event,
    EventStore,
    Subscription,
    event_log,
    set_cursor,
)
from pipelines.activation.push import CONSENT_PARTS, PushStore, current_members
from pipelines.activation.segment_store import SegmentStore
from pipelines.activation.webhooks import DeliveryError, Sender, Target
from pipelines.config import PolicyCfg, Settings
from pipelines.lakehouse.catalog import OUTBOX, PROFILES
from pipelines.lakehouse.locks import StageBusyError, stage_lock
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.status import alerts_table, ops_event
from pipelines.profile.build import profile_schema
from pipelines.profile.rules import RuleCompiler, RuleError

log = logging.getLogger(__name__)

FANOUT_BATCH = 5000  # log events fanned out per step
LOG_BATCH = 50_000  # outbox rows logged per transaction
SEND_BUDGET_S = 1.0  # longest a queue is sent before the deliverer looks for other work


class ProfilesView(Protocol):
    """What delivery needs of a snapshot: its gold version and a DuckDB `profiles` table."""

    @property
    def version(self) -> int: ...

    @property
    def db(self) -> duckdb.DuckDBPyConnection: ...


@dataclass(frozen=True)
class DeliveryView:
    """The deliverer's view of one gold.profiles version: person, rule attributes, consent."""

    version: int
    db: duckdb.DuckDBPyConnection


def load_view(
    lake: LakeReader, policy: PolicyCfg, attributes: Iterable[str]
) -> DeliveryView | None:
    """The current gold version's columns delivery reads: person, the `attributes` rules may
    use, consent (None before gold exists)."""
    version = lake.version(PROFILES)
    if version is None:
        return None
    consent = [f"consent_{p}_{s}" for p in policy.purposes for s in CONSENT_PARTS]
    return DeliveryView(version, profiles_db(lake, version, ["person_id", *attributes, *consent]))


def profiles_db(
    lake: LakeReader, version: int, columns: list[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a `profiles` view over one gold.profiles version's Parquet files
    (`columns` of them that exist, or all). A view, not a copy: at 1M persons a copy holds
    ~700 MB, and set queries run a few times per version."""
    dt = lake.table(PROFILES, version)
    if dt is None:
        raise FileNotFoundError("gold.profiles does not exist yet: run `cdp run` first")
    names = pa.schema(dt.schema().to_arrow()).names
    chosen = [c for c in dict.fromkeys(columns) if c in names] if columns else names
    selected = ", ".join(f'"{c}"' for c in chosen)  # names from the table's schema
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in dt.file_uris())
    db = duckdb.connect()
    db.execute(  # a view takes no parameters
        f"CREATE VIEW profiles AS SELECT {selected} "
        f"FROM read_parquet([{files}], union_by_name=true)"
    )
    return db


class Visibility:
    """Which events a channel (or a steward / admin: `channel` None) may receive, decided on one
    snapshot: the event's purpose must be held by the channel and in force for the person."""

    def __init__(self, settings: Settings, snapshot: ProfilesView | None) -> None:
        self.policy = settings.policy
        self.snapshot = snapshot
        self._in_force: dict[str, dict[str, bool]] = {}

    def purpose(self, event: Event) -> str | None:
        kind = EVENT_TYPES[event.event_type][0]
        return str(event.payload.get("purpose")) if kind in ("segment", "trigger") else kind

    def prepare(self, events: list[Event]) -> None:
        """Look up, once per purpose, the consent of every person these events are about."""
        wanted: dict[str, set[str]] = {}
        for e in events:
            p = self.purpose(e)
            if p not in (None, "ops") and e.person_id:
                wanted.setdefault(p, set()).add(e.person_id)
        if self.snapshot is None:
            return
        for purpose, persons in wanted.items():
            if purpose not in self.policy.purposes:
                continue
            rows = (
                self.snapshot.db.cursor()
                .execute(
                    f'SELECT person_id, coalesce("consent_{purpose}_granted", false) '
                    "FROM profiles WHERE person_id IN (SELECT unnest(?))",
                    [sorted(persons)],
                )
                .fetchall()
            )
            self._in_force.setdefault(purpose, {}).update(dict(rows))

    def allows(self, channel: str | None, event: Event) -> bool:
        purpose = self.purpose(event)
        if purpose == "ops":
            return channel is None
        if channel is None:
            return False
        if purpose is None:
            return True
        held = self.policy.channels.get(channel)
        if held is None or purpose not in held.purposes:
            return False
        if event.event_type == "segment.exited":  # often *because* consent ended: always told
            return True
        return self._in_force.get(purpose, {}).get(event.person_id or "", False)


class Deliverer:
    """The delivery steps, run by `run()` while this process holds the delivery lock."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.api.events
        url = settings.database_url
        self.store = EventStore(url)
        self.pushes = PushStore(self.store)
        self.segments = SegmentStore(url)
        self.compiler = RuleCompiler(settings.policy, profile_schema(settings.policy))
        self.lake = LakeReader(settings.paths.lake_root)
        self.view: DeliveryView | None = None
        self._checked = 0.0
        self._evaluated: tuple[int, tuple[int, int]] | None = None  # (gold version, segments)
        self.sender = Sender(self.cfg.timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="deliver")
        self.stop = threading.Event()

    def run(self) -> None:
        """Deliver until `stop` is set. Of the deliverers on a data root one holds its
        `delivery` lock and works; the others wait to take over when it goes."""
        try:
            while not self.stop.is_set():
                try:
                    with stage_lock(self.settings.data_root, "delivery"):
                        self._rounds()
                except StageBusyError:
                    self.stop.wait(1.0)
        finally:
            self.pool.shutdown(wait=True)
            self.sender.close()

    def _rounds(self) -> None:
        while not self.stop.is_set():
            busy = False
            try:
                busy = self.step()
            except Exception:  # one bad round must not end delivery: log it, go on
                log.exception("delivery round failed; retrying")
            self.stop.wait(0 if busy else self.cfg.poll_s)

    def snapshot(self) -> DeliveryView | None:
        """The delivery view, reloaded when gold has a new version (checked every
        `api.snapshot_poll_s`)."""
        now = time.monotonic()
        if self.view is None or now - self._checked >= self.settings.api.snapshot_poll_s:
            self._checked = now
            version = self.lake.version(PROFILES)
            if version is not None and (self.view is None or self.view.version != version):
                self.view = load_view(self.lake, self.settings.policy, self.compiler.kinds)
        return self.view

    def step(self) -> bool:
        """One round of every delivery step; True when more work is waiting."""
        more = self.log_outbox()
        self.log_alerts()
        self.evaluate_segments()
        more |= self.fan_out()
        more |= self.send_due()
        return more

    # ------------------------------------------------------------ 1. log

    def log_outbox(self) -> bool:
        current = self.lake.version(OUTBOX)
        if current is None:  # no outbox yet
            return False
        done = self.store.cursor("outbox")
        if done is not None and done >= current:
            return False
        types = [t for t in EVENT_TYPES if not t.startswith("segment.")]
        added = pl.from_arrow(self.lake.appended(OUTBOX, done, current))
        assert isinstance(added, pl.DataFrame)
        frame = added.filter(pl.col("event_type").is_in(types)).sort(
            "occurred_at", maintain_order=True
        )
        rows = frame.to_dicts() if frame.height else []
        with self.store.engine.begin() as conn:
            for i in range(0, max(len(rows), 1), LOG_BATCH):
                self.store.log(conn, rows[i : i + LOG_BATCH])
            set_cursor(conn, "outbox", current)
        return False

    def log_alerts(self) -> None:
        """Stewards' alerts not logged yet, as ops events (the gate and the checks write only
        the alerts table; this process is the event log's one writer, so its sequence
        numbers commit in order)."""
        logged = select(event_log.c.event_id).where(
            event_log.c.event_id == literal("alert-") + alerts_table.c.alert_id
        )
        unlogged = select(alerts_table).where(~exists(logged)).order_by(alerts_table.c.raised_at)
        with self.store.engine.begin() as conn:
            rows = [ops_event(dict(r._mapping)) for r in conn.execute(unlogged)]
            if rows:
                self.store.log(conn, rows)

    # ------------------------------------------------------------ 2. segments

    def evaluate_segments(self) -> None:
        """Each saved segment's membership once per snapshot and rule version."""
        snap = self.snapshot()
        if snap is None:
            return
        state = (snap.version, self.segments.fingerprint())
        if state == self._evaluated:  # nothing new: no segment read on an idle round
            return
        for seg in self.segments.list():
            done = f"segment:{seg.segment_id}:v{seg.version}"
            if self.store.cursor(done) == snap.version:
                continue
            try:
                compiled = self.compiler.compile(seg.rule)
            except RuleError as err:  # a policy change retired an attribute the rule uses
                log.warning("segment %s no longer compiles: %s", seg.segment_id, err)
                continue
            members = current_members(snap.db.cursor(), compiled, seg.purpose)
            self.pushes.evaluate(seg, members, snap.version, (done, snap.version))
        self._evaluated = state

    # ------------------------------------------------------------ 3. fan out

    def fan_out(self) -> bool:
        """Queue the events logged since the cursor for every subscription that matches and
        may see them; events of types nobody subscribes to are passed over unread."""
        after = self.store.cursor("fanout") or 0
        head = self.store.head()
        if head <= after:
            return False
        subs = self.store.subscriptions()
        types = sorted({t for s in subs for t in s.event_types})
        events = self.store.events_after(after, FANOUT_BATCH, types, until=head) if types else []
        full = len(events) == FANOUT_BATCH
        seen = Visibility(self.settings, self.snapshot())
        seen.prepare(events)
        with self.store.engine.begin() as conn:
            for sub in subs:
                mine = [e for e in events if sub.matches(e) and seen.allows(sub.channel, e)]
                self.store.enqueue(
                    conn,
                    sub.queue,
                    [
                        (e.event_id, e.person_id, json.dumps(e.as_json()), e.occurred_at)
                        for e in mine
                    ],
                )
            set_cursor(conn, "fanout", events[-1].seq if full else head)
        return full

    # ------------------------------------------------------------ 4. send

    def send_due(self) -> bool:
        queues = self.store.due_queues(datetime.now(UTC))
        if not queues:
            return False
        subs = {s.queue: s for s in self.store.subscriptions(active=False)}
        results = list(self.pool.map(lambda q: self._send(q, subs.get(q)), queues))
        return any(results)

    def _send(self, queue: str, sub: Subscription | None) -> bool:
        """Send one queue's messages in order, batch after batch, for up to SEND_BUDGET_S
        (other queues and the other steps go on meanwhile); True when more may wait."""
        deadline = time.monotonic() + SEND_BUDGET_S
        while self._send_head(queue, sub):
            if time.monotonic() > deadline or self.stop.is_set():
                return True
        return False

    def _send_head(self, queue: str, sub: Subscription | None) -> bool:
        """Send the head of one queue; True when it was taken (more may wait behind it)."""
        push = queue.startswith("push:")
        batch = self.store.batch(queue, 1 if push else self.cfg.batch)
        if not batch:
            return False
        ids = [m["id"] for m in batch]
        try:
            target = self._target(queue, sub)
            if push:
                key, body = batch[0]["message_key"], batch[0]["body"].encode()
            else:
                assert sub is not None
                key = f"{sub.subscription_id}:{batch[0]['message_key']}"
                events = ",".join(m["body"] for m in batch)
                body = f'{{"subscription_id":"{sub.subscription_id}","events":[{events}]}}'.encode()
            self.sender.send(target, key, body, "application/json")
        except DeliveryError as err:
            parked = self.store.failed(
                ids,
                str(err),
                datetime.now(UTC),
                self.cfg.max_attempts,
                self.cfg.backoff_s,
                self.cfg.backoff_max_s,
            )
            log.warning("%s: delivery failed (%s), %d parked", queue, err, parked)
            return False
        self.store.delivered(ids, datetime.now(UTC))
        return True

    def _target(self, queue: str, sub: Subscription | None) -> Target:
        if queue.startswith("push:"):
            end = self.settings.endpoint(queue.removeprefix("push:"))
            if end.kind == "file":
                return Target("file", folder=end.path)
            if not end.secret:
                raise DeliveryError(
                    f"the {end.channel} endpoint has no signing secret: set {end.secret_env}"
                )
            return Target("http", url=end.url, secret=end.secret)
        if sub is None:
            raise DeliveryError(f"{queue}: the subscription no longer exists")
        return Target("http", url=sub.url, secret=sub.secret)


def serve_deliveries(settings: Settings) -> None:
    """`cdp deliver` (and the child `cdp serve` starts): deliver until SIGTERM or Ctrl-C, or
    until the parent process (if started by one) is gone."""
    deliverer = Deliverer(settings)
    parent = os.getppid()

    def stop(*_: Any) -> None:
        deliverer.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def orphaned() -> None:
        while not deliverer.stop.wait(1.0):
            if os.getppid() != parent:
                deliverer.stop.set()

    threading.Thread(target=orphaned, daemon=True).start()
    deliverer.run()
