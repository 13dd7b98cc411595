"""Saved segments: name, owner, purpose and every version of the rule (operational database:
SQLite by default, any SQLAlchemy URL). A change is a new version; old ones stay for audit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Integer, String, Table, func, select

from pipelines.ops.store import jsonable, metadata, ops_engine, utc

segments = Table(
    "segments",
    metadata,
    Column("segment_id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("owner", String(100), nullable=False),  # the key that created it
    Column("purpose", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
segment_versions = Table(
    "segment_versions",
    metadata,
    Column("segment_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("rule", JSON, nullable=False),
    Column("author", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Segment:
    segment_id: str
    name: str
    owner: str
    purpose: str
    version: int
    rule: Any
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "name": self.name,
            "owner": self.owner,
            "purpose": self.purpose,
            "version": self.version,
            "rule": self.rule,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class SegmentStore:
    def __init__(self, url: str) -> None:
        self.engine = ops_engine(url)

    def create(self, name: str, purpose: str, rule: Any, owner: str) -> Segment:
        now = datetime.now(UTC)
        sid = f"seg_{uuid.uuid4().hex[:16]}"
        with self.engine.begin() as conn:
            conn.execute(
                segments.insert(),
                [
                    {
                        "segment_id": sid,
                        "name": name,
                        "owner": owner,
                        "purpose": purpose,
                        "created_at": now,
                    }
                ],
            )
            conn.execute(
                segment_versions.insert(),
                [
                    {
                        "segment_id": sid,
                        "version": 1,
                        "rule": rule,
                        "author": owner,
                        "created_at": now,
                    }
                ],
            )
        found = self.get(sid)
        assert found is not None
        return found

    def update(self, segment_id: str, rule: Any, author: str) -> Segment | None:
        """A new version of the rule (None when the segment does not exist)."""
        with self.engine.begin() as conn:
            top = conn.execute(
                select(func.max(segment_versions.c.version)).where(
                    segment_versions.c.segment_id == segment_id
                )
            ).scalar()
            if top is None:
                return None
            conn.execute(
                segment_versions.insert(),
                [
                    {
                        "segment_id": segment_id,
                        "version": top + 1,
                        "rule": rule,
                        "author": author,
                        "created_at": datetime.now(UTC),
                    }
                ],
            )
        return self.get(segment_id)

    def get(self, segment_id: str, version: int | None = None) -> Segment | None:
        """The segment at `version` (default: the latest)."""
        s, v = segments.c, segment_versions.c
        q = (
            select(
                s.segment_id,
                s.name,
                s.owner,
                s.purpose,
                s.created_at,
                v.version,
                v.rule,
                v.created_at.label("updated_at"),
            )
            .join_from(segments, segment_versions, s.segment_id == v.segment_id)
            .where(s.segment_id == segment_id)
        )
        q = q.where(v.version == version) if version else q.order_by(v.version.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else _segment(row)

    def versions(self, segment_id: str) -> list[dict[str, Any]]:
        v = segment_versions.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(v.version, v.rule, v.author, v.created_at)
                .where(v.segment_id == segment_id)
                .order_by(v.version)
            ).mappings()
            return [jsonable(r) for r in rows]

    def fingerprint(self) -> tuple[int, int]:
        """(segments, versions) stored: changes whenever a segment is created or changed."""
        with self.engine.connect() as conn:
            n, v = conn.execute(
                select(func.count(func.distinct(segment_versions.c.segment_id)), func.count())
            ).one()
        return int(n), int(v)

    def list(self) -> list[Segment]:
        with self.engine.connect() as conn:
            ids = conn.execute(select(segments.c.segment_id).order_by(segments.c.created_at))
            found = [self.get(sid) for (sid,) in ids]
        return [s for s in found if s is not None]


def _segment(row: Any) -> Segment:
    return Segment(
        segment_id=row["segment_id"],
        name=row["name"],
        owner=row["owner"],
        purpose=row["purpose"],
        version=row["version"],
        rule=row["rule"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
    )
