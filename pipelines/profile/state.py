"""What gold reflects, and where a reader finds a profile in time: the app transactions that
tie gold to silver and identity, the outbox's schema, the current person of an identifier and a
profile as it stood at a moment. Reads only (delta-rs), so the API and the checks can use it
without a JVM; `pipelines.profile.stage` computes and writes gold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from pipelines.config import Settings
from pipelines.lakehouse.catalog import (
    DAILY,
    FACTS,
    LINKS,
    MAP,
    MERGES,
    OUTBOX,
    PROFILES,
    silver_table,
)
from pipelines.lakehouse.reader import LakeReader

IDENTITY_APP = f"{PROFILES}<-{LINKS}"
CLOCK_APP = f"{PROFILES}@clock_day"  # version = the clock day's ordinal
REBUILD_APP = f"{PROFILES}@rebuild"  # version = how many rebuilds ran

OUTBOX_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),  # idempotency key for delivery
        ("event_type", pa.string()),
        ("person_id", pa.string()),
        ("related_person_id", pa.string()),
        ("profile_version", pa.int64()),
        ("payload", pa.string()),  # JSON
        ("occurred_at", pa.timestamp("us", tz="UTC")),
    ]
)


def app_id(table: str, silver: str) -> str:
    return f"{table}<-{silver}"


def silver_tables(settings: Settings, lake: LakeReader) -> dict[str, str]:
    tables = {s: silver_table(settings.contract(s)) for s in settings.profile.anchors}
    return {s: t for s, t in tables.items() if lake.exists(t)}


def silver_ranges(lake: LakeReader, settings: Settings) -> dict[str, tuple[int | None, int]]:
    """Per source with a silver table: (version gold reflects, version it would read up to);
    the rows in between are waiting for promotion (the quality gate judges them)."""
    return ranges_of(lake, silver_tables(settings, lake))


def ranges_of(
    lake: LakeReader, silver: dict[str, str], until: Mapping[str, int] | None = None
) -> dict[str, tuple[int | None, int]]:
    """Per source: (version the profiles reflect, version to read up to). When an interrupted
    run committed some gold tables past the profiles, the target is exactly that range, so the
    rerun's appends are recognised as done rather than added twice."""
    ranges: dict[str, tuple[int | None, int]] = {}
    for s, t in silver.items():
        done = lake.committed(PROFILES, app_id(PROFILES, t)) if lake.exists(PROFILES) else None
        ahead = [
            v
            for table in (DAILY, FACTS, OUTBOX)
            if (v := lake.committed(table, app_id(table, t))) is not None
            and (done is None or v > done)
        ]
        current = lake.version(t)
        assert current is not None
        if until and t in until:
            current = min(current, until[t])
        if current < 0:  # held by the quality gate before its first promotion
            continue
        ranges[s] = (done, max(ahead) if ahead else current)
    return ranges


def person_of(lake: LakeReader, id_type: str, value: str) -> str | None:
    """The person holding an identifier now (its open tenure; else its latest one)."""
    if not lake.exists(MAP):
        return None
    rows = lake.read_polars(
        MAP,
        ["person_id", "valid_from", "valid_to"],
        (pl.col("id_type") == id_type) & (pl.col("id_value") == value),
    )
    if rows.is_empty():
        return None
    best = rows.sort(pl.col("valid_to").is_null(), "valid_from", nulls_last=False).row(
        -1, named=True
    )
    return str(best["person_id"])


def person_at(lake: LakeReader, id_type: str, value: str, at: datetime) -> str | None:
    """The person who held an identifier at `at` (the tenure open then, for recyclable ones)."""
    if not lake.exists(MAP):
        return None
    rows = lake.read_polars(
        MAP,
        ["person_id", "tenure", "valid_to"],
        (pl.col("id_type") == id_type) & (pl.col("id_value") == value),
    ).filter(
        (pl.col("tenure").is_null() | (pl.col("tenure") <= at))
        & (pl.col("valid_to").is_null() | (pl.col("valid_to") > at))
    )
    return None if rows.is_empty() else str(rows.sort("tenure").get_column("person_id")[-1])


@dataclass(frozen=True)
class Holding:
    """A person who held an identifier, over [since, until) (None: open-ended)."""

    person_id: str
    since: datetime | None
    until: datetime | None


def merged_into(lake: LakeReader, person_id: str) -> list[str]:
    """The person ids merged into `person_id` (and into those, and so on)."""
    if not lake.exists(MERGES):
        return []
    merges = lake.read_polars(MERGES, ["change", "from_person_id", "to_person_id"]).filter(
        pl.col("change") == "merge"
    )
    into: dict[str, list[str]] = {}
    for r in merges.iter_rows(named=True):
        into.setdefault(r["to_person_id"], []).append(r["from_person_id"])
    out: list[str] = []
    todo = [person_id]
    while todo:  # merges of merges
        for old in into.get(todo.pop(), []):
            if old not in out and old != person_id:
                out.append(old)
                todo.append(old)
    return out


def holders(lake: LakeReader, id_type: str, value: str) -> list[Holding]:
    """Everyone who held an identifier, each over their tenure, and the person ids merged into
    each of them over the same tenure (what was recorded before a merge names the old id). A
    recycled number's earlier and later owners are separate holdings."""
    if not lake.exists(MAP):
        return []
    rows = lake.read_polars(
        MAP,
        ["person_id", "tenure", "valid_to"],
        (pl.col("id_type") == id_type) & (pl.col("id_value") == value),
    )
    held = [Holding(r["person_id"], r["tenure"], r["valid_to"]) for r in rows.iter_rows(named=True)]
    return held + [
        Holding(old, h.since, h.until) for h in held for old in merged_into(lake, h.person_id)
    ]


AsOf = Literal["event_time", "commit_time"]
DATA_CLOCK = "data_clock"  # gold.profiles commit metadata: the newest event time it reflects


@dataclass(frozen=True)
class ProfilesVersion:
    """A gold.profiles version: when it was committed and the newest event time it reflects."""

    version: int
    committed: datetime
    data_clock: datetime


def profiles_versions(lake: LakeReader) -> list[ProfilesVersion]:
    """Every gold.profiles version in order. Its data clock is the one its commit recorded; a
    commit that adds no events (a compaction, a version written before clocks were recorded)
    keeps the clock before it, or its commit time when there is none."""
    dt = lake.table(PROFILES)
    if dt is None:
        return []
    out: list[ProfilesVersion] = []
    clock: datetime | None = None
    for h in sorted(dt.history(), key=lambda h: h["version"]):
        committed = datetime.fromtimestamp(h["timestamp"] / 1000, UTC)
        clock = recorded_clock(h) or clock
        out.append(ProfilesVersion(h["version"], committed, clock or committed))
    return out


def recorded_clock(commit: Mapping[str, Any]) -> datetime | None:
    """The data clock a gold.profiles commit (a `history` entry) recorded, if it did."""
    text = commit.get("userMetadata")
    recorded = json.loads(text).get(DATA_CLOCK) if text else None
    return datetime.fromisoformat(recorded) if recorded else None


def profiles_version_at(lake: LakeReader, at: datetime, by: AsOf = "event_time") -> int | None:
    """The gold.profiles version that shows the profiles as they stood at `at` (None when no
    version does). By event time: the newest version reflecting no event after `at`, so a
    backfill of old events still answers for the days it covers and never shows what happened
    later. By commit time: the version current at `at`, what the CDP knew and served then
    (commit times as `history` shows them; delta-rs's `load_as_version(datetime)` judges by the
    log file's modification time, a little later)."""
    chosen = None
    for v in profiles_versions(lake):
        if (v.data_clock if by == "event_time" else v.committed) <= at:
            chosen = v.version
    return chosen


def profile_as_of(
    lake: LakeReader, person_id: str, at: datetime | None, by: AsOf = "event_time"
) -> dict[str, object] | None:
    """The person's gold profile now (`at` None) or as it stood at `at` (`profiles_version_at`,
    then Delta time travel). None when the person had no profile then."""
    version = lake.version(PROFILES) if at is None else profiles_version_at(lake, at, by)
    if version is None:
        return None
    rows = lake.read_arrow(PROFILES, where=pl.col("person_id") == person_id, version=version)
    return rows.to_pylist()[0] if rows.num_rows else None
