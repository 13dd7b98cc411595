"""The serving snapshot: gold.profiles and the current identifiers, held in memory per process.

A snapshot is immutable. The holder swaps in a new one when the gold Delta version changes; a
request takes the current snapshot once and finishes on it, so a reload never fails a request in
flight. Point lookups use dictionaries built at load (identifier -> person -> row); the same data
sits in an in-process DuckDB database for set queries (segments).
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field

import duckdb
import polars as pl

from api.render import RenderedProfiles
from pipelines.config import PolicyCfg
from pipelines.lakehouse.catalog import MAP, MERGES, PROFILES
from pipelines.lakehouse.reader import LakeReader


@dataclass(frozen=True)
class Snapshot:
    """One Delta version of gold.profiles with its lookup structures."""

    version: int
    loaded_at: float
    rendered: RenderedProfiles = field(repr=False)
    row_of: dict[str, int]  # person_id -> row
    row_of_id: dict[str, int]  # "id_type:id_value" of an open identifier -> its person's row
    merged_into: dict[str, str]  # absorbed person -> surviving person
    db: duckdb.DuckDBPyConnection = field(repr=False)

    def surviving(self, person_id: str) -> str | None:
        """The person an absorbed id was merged into, following chains of merges."""
        seen = set()
        current = person_id
        while current in self.merged_into and current not in seen:
            seen.add(current)
            current = self.merged_into[current]
        return current if current != person_id and current in self.row_of else None


def load_snapshot(lake: LakeReader, policy: PolicyCfg) -> Snapshot:
    """Read the current gold version (profiles, open identifiers, merges) into memory: the
    profiles pre-rendered for lookups, and a DuckDB copy for set queries."""
    dt = lake.table(PROFILES)
    if dt is None:
        raise FileNotFoundError("gold.profiles does not exist yet: run `cdp run` first")
    version = dt.version()
    profiles = lake.read_polars(PROFILES, version=version)
    ids = lake.read_polars(MAP, ["id_type", "id_value", "person_id"], pl.col("valid_to").is_null())
    merges = (
        lake.read_polars(MERGES, ["from_person_id", "to_person_id"], pl.col("change") == "merge")
        if lake.exists(MERGES)
        else pl.DataFrame({"from_person_id": [], "to_person_id": []})
    )
    db = duckdb.connect()
    db.register("profiles_arrow", profiles.to_arrow())
    db.execute("CREATE TABLE profiles AS SELECT * FROM profiles_arrow")
    db.unregister("profiles_arrow")
    rendered = RenderedProfiles(profiles, policy, version)
    # identifier -> row, as "type:value" strings and ints: no tuples for the collector to scan
    rows = profiles.select(pl.col("person_id"), pl.int_range(pl.len()).alias("row"))
    held = ids.join(rows, on="person_id").select(
        (pl.col("id_type") + ":" + pl.col("id_value")).alias("key"), "row"
    )
    del profiles  # only the rendered buffers and DuckDB's copy stay
    return Snapshot(
        version=version,
        loaded_at=time.time(),
        rendered=rendered,
        row_of={pid: i for i, pid in enumerate(rendered.person_ids)},
        row_of_id=dict(
            zip(held.get_column("key").to_list(), held.get_column("row").to_list(), strict=True)
        ),
        merged_into=dict(
            zip(
                merges.get_column("from_person_id").to_list(),
                merges.get_column("to_person_id").to_list(),
                strict=True,
            )
        ),
        db=db,
    )


class SnapshotHolder:
    """The current snapshot of one API process, and its reloads."""

    def __init__(self, lake: LakeReader, policy: PolicyCfg) -> None:
        self.lake = lake
        self.policy = policy
        self.current: Snapshot | None = None
        self.reloads = 0
        self.last_reload_s = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Load a new snapshot when gold has a newer version; True when one was swapped in."""
        with self._lock:  # one reload at a time; requests never wait for it
            version = self.lake.version(PROFILES)
            if version is None or (self.current and self.current.version == version):
                return False
            started = time.perf_counter()
            fresh = load_snapshot(self.lake, self.policy)
            # The swap is one reference assignment; requests holding the old snapshot finish on
            # it, and it is freed (DuckDB database included) when the last of them lets go.
            self.current = fresh
            # Millions of long-lived objects: keep them out of every future collection (they
            # are still freed by reference counting when the snapshot is let go).
            gc.freeze()
            self.reloads += 1
            self.last_reload_s = time.perf_counter() - started
            return True
