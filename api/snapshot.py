"""The serving snapshot: gold.profiles and the current identifiers, as one API process serves them.

A snapshot is immutable: a request takes the current one once and finishes on it. It is a
memory-mapped base (api/base.py: one gold version rendered and indexed, shared by the processes
of the host) plus what changed since: the rows of persons whose profile changed, appended to the
process's row store (rows are never rewritten, so a request's row stays valid), and small
dictionaries of the persons and identifiers that moved. Each new gold version is applied from the
tables' Change Data Feed (read with delta-rs), so an update costs what changed, not the size of
the table, and the memory does not double while it runs. A rewrite of a table (a full rebuild,
a restore, a schema change) starts again from a base. When the changes held in memory have grown
past a fifth of the base, a new base is built in a separate process and adopted when ready.

Set queries (segments) run in DuckDB over a view of the version's Parquet files: no copy.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import duckdb
import polars as pl

from api.base import Base, Versions, builder, newest_base, newest_base_versions
from api.render import RowsServed, RowStore, newest_event, tail
from pipelines.activation.delivery import profiles_db
from pipelines.config import PolicyCfg
from pipelines.lakehouse.catalog import MAP, MERGES, PROFILES
from pipelines.lakehouse.reader import LakeReader

GONE = -1  # a person whose profile was removed since the base
REBUILD_FRACTION = 0.2  # changed rows, as a share of the base, that start a new base
REBUILD_MIN_ROWS = 10_000
CHANGE = "_change_type"


@dataclass(frozen=True)
class Snapshot(RowsServed):
    """One gold version as served: the base and the changes since, with its lookups."""

    versions: Versions
    loaded_at: float
    store: RowStore = field(repr=False)
    base: Base = field(repr=False)
    persons: dict[str, int] = field(repr=False)  # changed since the base (GONE: removed)
    keys: dict[str, str | None] = field(repr=False)  # "type:value" -> holder (None: nobody)
    merged_into: dict[str, str] = field(repr=False)  # absorbed person -> surviving person
    newest: datetime | None
    db: duckdb.DuckDBPyConnection = field(repr=False)
    tail: bytes = field(repr=False)

    @property
    def version(self) -> int:
        return self.versions.profiles

    @property
    def changed_rows(self) -> int:
        """Rows appended since the base (what a new base would fold in)."""
        return len(self.store) - len(self.base.chunk)

    def row_of(self, person_id: str) -> int | None:
        """The row of a person's current profile (None: no profile now)."""
        row = self.persons.get(person_id)
        if row is not None:
            return None if row == GONE else row
        return self.base.persons.get(person_id)

    def row(self, person_id: str) -> int:
        """The row of a person this version's profiles hold (a segment member, for example)."""
        row = self.row_of(person_id)
        if row is None:
            raise KeyError(f"{person_id} has no profile in snapshot version {self.version}")
        return row

    def row_of_key(self, id_type: str, value: str) -> int | None:
        """The row of the person holding an identifier now."""
        key = f"{id_type}:{value}"
        if key in self.keys:
            holder = self.keys[key]
            return None if holder is None else self.row_of(holder)
        row = self.base.identifiers.get(key)
        if row is None or not self.persons:
            return row
        person = self.store.person_id(row)
        return row if person not in self.persons else self.row_of(person)

    def surviving(self, person_id: str) -> str | None:
        """The person an absorbed id was merged into, following chains of merges."""
        seen = set()
        current = person_id
        while current in self.merged_into and current not in seen:
            seen.add(current)
            current = self.merged_into[current]
        return current if current != person_id and self.row_of(current) is not None else None


def on_base(lake: LakeReader, base: Base, policy: PolicyCfg) -> Snapshot:
    """A snapshot of exactly the base's versions."""
    return Snapshot(
        versions=base.versions,
        loaded_at=time.time(),
        store=base.store(policy),
        base=base,
        persons={},
        keys={},
        merged_into=dict(base.merged_into),
        newest=base.newest,
        db=profiles_db(lake, base.versions.profiles),
        tail=tail(base.versions.profiles, base.newest),
    )


def advanced(lake: LakeReader, snap: Snapshot, target: Versions) -> Snapshot | None:
    """`snap` moved to `target` by applying the changes of the versions between (None: a table
    was rewritten on the way, or its change files are gone: start again from a base)."""
    had = snap.versions
    profiles = lake.row_changes(PROFILES, had.profiles, target.profiles)
    ids = lake.row_changes(MAP, had.identity_map, target.identity_map)
    merges = lake.row_changes(MERGES, had.merges, target.merges)
    if profiles is None or ids is None or merges is None:
        return None
    persons, newest = dict(snap.persons), snap.newest
    if profiles.height:
        latest = _latest(profiles, "person_id")
        kept = latest.filter(pl.col(CHANGE) != "delete").drop(CHANGE, "_commit_version")
        if kept.height:
            first = snap.store.render(kept)
            ids_of = kept.get_column("person_id").to_list()
            persons.update(zip(ids_of, range(first, first + len(ids_of)), strict=True))
            found = newest_event(kept)
            newest = max(newest, found) if newest and found else newest or found
        gone = latest.filter(pl.col(CHANGE) == "delete").get_column("person_id").to_list()
        persons.update(dict.fromkeys(gone, GONE))
    keys = dict(snap.keys)
    if ids.height:
        keys.update(_holders(ids))
    merged = snap.merged_into
    if merges.height:
        new = merges.filter((pl.col(CHANGE) == "insert") & (pl.col("change") == "merge"))
        merged = {**merged, **dict(zip(new["from_person_id"], new["to_person_id"], strict=True))}
    return Snapshot(
        versions=target,
        loaded_at=time.time(),
        store=snap.store,
        base=snap.base,
        persons=persons,
        keys=keys,
        merged_into=merged,
        newest=newest,
        db=profiles_db(lake, target.profiles) if target.profiles != had.profiles else snap.db,
        tail=tail(target.profiles, newest),
    )


def _latest(changes: pl.DataFrame, key: str) -> pl.DataFrame:
    """Each key's last change (pre-images dropped: the post-image of the same update follows)."""
    return (
        changes.filter(pl.col(CHANGE) != "update_preimage")
        .sort("_commit_version", maintain_order=True)
        .unique(key, keep="last", maintain_order=True)
    )


def _holders(changes: pl.DataFrame) -> dict[str, str | None]:
    """Each changed identifier's holder now, from identity_map changes: an open row (no
    `valid_to`) added means that person holds it; one removed or closed means nobody, unless the
    same commit opened another (a new tenure)."""
    open_row = pl.col("valid_to").is_null()
    added = pl.col(CHANGE).is_in(["insert", "update_postimage"])
    removed = pl.col(CHANGE).is_in(["delete", "update_preimage"])
    moves = (
        changes.filter(open_row & (added | removed))
        .select(
            (pl.col("id_type") + ":" + pl.col("id_value")).alias("key"),
            "_commit_version",
            added.alias("added"),
            pl.when(added).then(pl.col("person_id")).alias("holder"),
        )
        .sort(["_commit_version", "added"], maintain_order=True)
        .unique("key", keep="last", maintain_order=True)
    )
    return dict(zip(moves["key"].to_list(), moves["holder"].to_list(), strict=True))


class SnapshotHolder:
    """The current snapshot of one API process, and how it follows gold."""

    def __init__(self, lake: LakeReader, policy: PolicyCfg) -> None:
        self.lake = lake
        self.policy = policy
        self.current: Snapshot | None = None
        self.reloads = 0  # versions taken (applied or started from a base)
        self.full_loads = 0  # times it started from a base
        self.last_reload_s = 0.0
        self._lock = threading.Lock()
        self._builder: subprocess.Popen[bytes] | None = None

    def refresh(self) -> bool:
        """Take gold's newest versions (or a newer base another process built); True when a new
        snapshot was swapped in."""
        with self._lock:  # one update at a time; requests never wait for it
            target = Versions.current(self.lake)
            if target is None:
                return False
            current = self.current
            base = self._newer_base(current, target)
            if current is not None and current.versions == target and base is None:
                return False
            started = time.perf_counter()
            fresh = None
            if current is not None and base is None:
                fresh = advanced(self.lake, current, target)
            if fresh is None:
                fresh = self._from_base(base, target)
            # The swap is one reference assignment; requests holding the old snapshot finish on
            # it, and what only it referenced is freed when the last of them lets go.
            self.current = fresh
            self.reloads += 1
            self.last_reload_s = time.perf_counter() - started
            if fresh.changed_rows > max(REBUILD_MIN_ROWS, REBUILD_FRACTION * len(fresh.base.chunk)):
                self._build_in_background()
            return True

    def _newer_base(self, current: Snapshot | None, target: Versions) -> Base | None:
        if current is None:
            return None
        found = newest_base_versions(self.lake, self.policy, target)
        if found is None or found.profiles <= current.base.versions.profiles:
            return None
        return newest_base(self.lake, self.policy, target)

    def _from_base(self, base: Base | None, target: Versions) -> Snapshot:
        """A snapshot from a base (the newest usable, else one built now) caught up to `target`."""
        self.full_loads += 1
        base = base or newest_base(self.lake, self.policy, target)
        if base is not None:
            snap = advanced(self.lake, on_base(self.lake, base, self.policy), target)
            if snap is not None:
                return snap
        # The builder takes the host's build lock: the other processes wait for it, and a base
        # another process just built for these versions is taken as it is.
        done = subprocess.run(
            builder(self.lake, self.policy), capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError(f"building the serving base failed: {done.stderr[-2000:]}")
        target = Versions.current(self.lake) or target
        base = newest_base(self.lake, self.policy, target)
        if base is None:
            raise RuntimeError(f"no serving base under {self.lake.root} after building one")
        snap = on_base(self.lake, base, self.policy)
        return advanced(self.lake, snap, target) or snap

    def _build_in_background(self) -> None:
        if self._builder is not None and self._builder.poll() is None:
            return
        self._builder = subprocess.Popen(
            builder(self.lake, self.policy),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def close(self) -> None:
        """Stop a base build this process started (the next start resumes from the old base)."""
        if self._builder is not None and self._builder.poll() is None:
            self._builder.terminate()
            self._builder.wait()
