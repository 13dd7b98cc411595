"""Segment membership over time: what each push told each channel, and the membership events
subscribers receive.

A push sends a channel the difference since its last push of the segment: who entered (the
profile as that channel may see it) and who exited. Membership is the segment's rule on the
current snapshot *and* the segment's purpose in force for the person, so a withdrawal is an
exit. Every push is audited: segment version, purpose and its legal basis, counts, and per
member who entered or exited the consent state used; the channel's membership, the audit and
the queued messages commit in one transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    String,
    Table,
    delete,
    select,
)

from pipelines.activation.events import EventStore, insert_ignoring_duplicates, set_cursor
from pipelines.activation.segment_store import Segment
from pipelines.config import PolicyCfg
from pipelines.ops.store import metadata, utc
from pipelines.profile.rules import Compiled

channel_members = Table(  # who each channel was last told is in each segment
    "channel_members",
    metadata,
    Column("segment_id", String(40), primary_key=True),
    Column("channel", String(100), primary_key=True),
    Column("person_id", String(40), primary_key=True),
)
segment_members = Table(  # each segment's members at the last evaluation (for its events)
    "segment_members",
    metadata,
    Column("segment_id", String(40), primary_key=True),
    Column("person_id", String(40), primary_key=True),
)
pushes = Table(
    "segment_pushes",
    metadata,
    Column("push_id", String(40), primary_key=True),
    Column("segment_id", String(40), nullable=False, index=True),
    Column("segment_version", Integer, nullable=False),
    Column("channel", String(100), nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("legal_basis", String(40), nullable=False),
    Column("snapshot_version", BigInteger),
    Column("members", Integer, nullable=False),
    Column("entered", Integer, nullable=False),
    Column("exited", Integer, nullable=False),
    Column("parts", Integer, nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
push_members = Table(  # per member who entered or exited: the consent state used
    "segment_push_members",
    metadata,
    Column("push_id", String(40), primary_key=True),
    Column("person_id", String(40), primary_key=True, index=True),
    Column("change", String(8), nullable=False),  # entered | exited
    Column("consent_granted", Boolean),
    Column("consent_since", DateTime(timezone=True)),
    Column("consent_legal_basis", String(40)),
    Column("consent_source", String(100)),
)


@dataclass(frozen=True)
class ConsentState:
    """A person's consent for one purpose as the snapshot had it."""

    granted: bool | None
    since: datetime | None
    legal_basis: str | None
    source: str | None


@dataclass
class PushPlan:
    """What a push will send: who is a member now, and the difference since the last push."""

    push_id: str
    segment: Segment
    channel: str
    legal_basis: str
    snapshot_version: int | None
    members: dict[str, ConsentState]
    entered: list[str]
    exited: list[str]
    exited_state: dict[str, ConsentState] = field(default_factory=dict)


CONSENT_PARTS = ("granted", "since", "legal_basis", "source")  # columns per purpose


def consent_columns(purpose: str) -> str:
    """The snapshot's consent columns of `purpose` (a policy purpose, never user text)."""
    return ", ".join(f'"consent_{purpose}_{s}"' for s in CONSENT_PARTS)


def current_members(db: Any, compiled: Compiled, purpose: str) -> dict[str, ConsentState]:
    """The rule's members whose consent (or contract) for `purpose` is in force, with it."""
    rows = db.execute(
        f"SELECT person_id, {consent_columns(purpose)} FROM profiles "
        f'WHERE {compiled.sql} AND coalesce("consent_{purpose}_granted", false) '
        "ORDER BY person_id",
        compiled.params,
    ).fetchall()
    return {p: ConsentState(g, utc(s) if s else None, b, src) for p, g, s, b, src in rows}


def consent_of(db: Any, persons: Sequence[str], purpose: str) -> dict[str, ConsentState]:
    """The consent state of `persons` for `purpose` (absent: no profile any more)."""
    if not persons:
        return {}
    rows = db.execute(
        f"SELECT person_id, {consent_columns(purpose)} FROM profiles "
        "WHERE person_id IN (SELECT unnest(?))",
        [list(persons)],
    ).fetchall()
    return {p: ConsentState(g, utc(s) if s else None, b, src) for p, g, s, b, src in rows}


class PushStore:
    """Channel and segment memberships, pushes and their audit."""

    def __init__(self, events: EventStore) -> None:
        self.events = events
        self.engine = events.engine

    def plan(
        self,
        db: Any,
        compiled: Compiled,
        segment: Segment,
        channel: str,
        policy: PolicyCfg,
        snapshot_version: int | None,
    ) -> PushPlan:
        """The difference between the segment's reachable members now and what `channel` was
        last told."""
        now = current_members(db, compiled, segment.purpose)
        with self.engine.connect() as conn:
            told = set(
                conn.execute(
                    select(channel_members.c.person_id).where(
                        (channel_members.c.segment_id == segment.segment_id)
                        & (channel_members.c.channel == channel)
                    )
                ).scalars()
            )
        exited = sorted(told - now.keys())
        return PushPlan(
            push_id=f"push_{uuid.uuid4().hex[:16]}",
            segment=segment,
            channel=channel,
            legal_basis=policy.purposes[segment.purpose].legal_basis,
            snapshot_version=snapshot_version,
            members=now,
            entered=sorted(now.keys() - told),
            exited=exited,
            exited_state=consent_of(db, exited, segment.purpose),
        )

    def record(self, plan: PushPlan, parts: list[bytes], key_id: str) -> None:
        """Audit the push, move the channel's membership and queue its parts, atomically."""
        at = datetime.now(UTC)
        seg = plan.segment
        none = ConsentState(None, None, None, None)
        audit = [_member_row(plan.push_id, p, "entered", plan.members[p]) for p in plan.entered] + [
            _member_row(plan.push_id, p, "exited", plan.exited_state.get(p, none))
            for p in plan.exited
        ]
        with self.engine.begin() as conn:
            conn.execute(
                pushes.insert(),
                [
                    {
                        "push_id": plan.push_id,
                        "segment_id": seg.segment_id,
                        "segment_version": seg.version,
                        "channel": plan.channel,
                        "purpose": seg.purpose,
                        "legal_basis": plan.legal_basis,
                        "snapshot_version": plan.snapshot_version,
                        "members": len(plan.members),
                        "entered": len(plan.entered),
                        "exited": len(plan.exited),
                        "parts": len(parts),
                        "key_id": key_id,
                        "at": at,
                    }
                ],
            )
            if audit:
                conn.execute(push_members.insert(), audit)
            mine = (channel_members.c.segment_id == seg.segment_id) & (
                channel_members.c.channel == plan.channel
            )
            if plan.exited:
                conn.execute(
                    delete(channel_members).where(
                        mine & channel_members.c.person_id.in_(plan.exited)
                    )
                )
            if plan.entered:
                conn.execute(
                    channel_members.insert(),
                    [
                        {"segment_id": seg.segment_id, "channel": plan.channel, "person_id": p}
                        for p in plan.entered
                    ],
                )
            self.events.enqueue(
                conn,
                f"push:{plan.channel}",
                [
                    (f"{plan.push_id}:{i + 1}", None, body.decode(), at)
                    for i, body in enumerate(parts)
                ],
            )

    def pushes(self, segment_id: str) -> list[dict[str, Any]]:
        """A segment's pushes, newest first, with their delivery state."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(pushes)
                    .where(pushes.c.segment_id == segment_id)
                    .order_by(pushes.c.at.desc())
                )
                .mappings()
                .all()
            )
        return [self._with_delivery(dict(r)) for r in rows]

    def delivery_of(self, channel: str, push_id: str) -> str:
        """delivered (every part acknowledged), pending, or dead (a part was parked)."""
        counts = self.events.message_status(f"push:{channel}", f"{push_id}:")
        return "dead" if counts.get("dead") else "pending" if counts.get("pending") else "delivered"

    def _with_delivery(self, row: dict[str, Any]) -> dict[str, Any]:
        state = self.delivery_of(row["channel"], row["push_id"])
        return {**row, "at": utc(row["at"]).isoformat(), "delivery": state}

    def audit(self, person_id: str, segment_id: str | None = None) -> list[dict[str, Any]]:
        """Every push that told a channel this person entered or exited a segment: the push,
        the segment version, the purpose and its legal basis, and the consent state used."""
        p, m = pushes.c, push_members.c
        q = (
            select(
                p.push_id,
                p.at,
                p.segment_id,
                p.segment_version,
                p.channel,
                p.purpose,
                p.legal_basis,
                p.key_id,
                p.snapshot_version,
                m.change,
                m.consent_granted,
                m.consent_since,
                m.consent_legal_basis,
                m.consent_source,
            )
            .join_from(pushes, push_members, p.push_id == m.push_id)
            .where(m.person_id == person_id)
        )
        if segment_id is not None:
            q = q.where(p.segment_id == segment_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(p.at)).mappings().all()
        out = []
        for r in rows:
            row = dict(r)
            row["at"] = utc(row["at"]).isoformat()
            if row["consent_since"] is not None:
                row["consent_since"] = utc(row["consent_since"]).isoformat()
            out.append(row)
        return out

    def memberships(self, person_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The segments these persons are members of now, and the channels told so."""
        s, c = segment_members.c, channel_members.c
        with self.engine.connect() as conn:
            segments = conn.execute(
                select(s.segment_id, s.person_id).where(s.person_id.in_(list(person_ids)))
            ).all()
            told = conn.execute(
                select(c.segment_id, c.person_id, c.channel).where(
                    c.person_id.in_(list(person_ids))
                )
            ).all()
        channels: dict[tuple[str, str], list[str]] = {}
        for seg, person, channel in told:
            channels.setdefault((seg, person), []).append(channel)
        keys = {(seg, person) for seg, person in segments} | set(channels)
        return [
            {
                "segment_id": seg,
                "person_id": person,
                "channels": sorted(channels.get((seg, person), [])),
            }
            for seg, person in sorted(keys)
        ]

    # ------------------------------------------------------------ membership events

    def evaluate(
        self,
        segment: Segment,
        members: dict[str, ConsentState],
        snapshot_version: int,
        cursor: tuple[str, int] | None = None,
    ) -> tuple[int, int]:
        """Log `segment.entered` / `segment.exited` for the change since the segment's last
        evaluation and store the new membership, moving `cursor` (one transaction: evaluating
        the same snapshot again logs nothing). Returns (entered, exited)."""
        at = datetime.now(UTC)
        with self.engine.begin() as conn:
            before = set(
                conn.execute(
                    select(segment_members.c.person_id).where(
                        segment_members.c.segment_id == segment.segment_id
                    )
                ).scalars()
            )
            entered = sorted(members.keys() - before)
            exited = sorted(before - members.keys())
            payload = {
                "segment_id": segment.segment_id,
                "segment_version": segment.version,
                "name": segment.name,
                "purpose": segment.purpose,
                "snapshot_version": snapshot_version,
            }
            events = [
                {
                    "event_id": f"segment.{kind}:{p}:{segment.segment_id}:{snapshot_version}",
                    "event_type": f"segment.{kind}",
                    "person_id": p,
                    "payload": json.dumps(payload, sort_keys=True),
                    "occurred_at": at,
                }
                for kind, persons in (("entered", entered), ("exited", exited))
                for p in persons
            ]
            self.events.log(conn, events)
            if exited:
                for i in range(0, len(exited), 10_000):
                    conn.execute(
                        delete(segment_members).where(
                            (segment_members.c.segment_id == segment.segment_id)
                            & segment_members.c.person_id.in_(exited[i : i + 10_000])
                        )
                    )
            insert_ignoring_duplicates(
                conn,
                segment_members,
                [{"segment_id": segment.segment_id, "person_id": p} for p in entered],
            )
            if cursor is not None:
                set_cursor(conn, *cursor)
        return len(entered), len(exited)


def _member_row(push_id: str, person: str, change: str, state: ConsentState) -> dict[str, Any]:
    return {
        "push_id": push_id,
        "person_id": person,
        "change": change,
        "consent_granted": state.granted,
        "consent_since": state.since,
        "consent_legal_basis": state.legal_basis,
        "consent_source": state.source,
    }
