"""The serving snapshot's base: one gold version rendered and indexed into Arrow IPC files kept
next to the lake (`<lake>/_serving/`), memory-mapped by every API process.

A starting process maps the newest base made under its policy and catches up from there with
the Change Data Feed (api/snapshot.py), so it is ready in well under a second whatever the number
of persons, and its worker processes share the pages instead of each holding a copy. Lookups by
identifier and person id go through sorted 64-bit hashes (blake2b, stable across processes and
versions) searched with numpy; the stored key is compared, so a hash collision costs a step and
never a wrong answer.

`python -m api.base LAKE_ROOT POLICY_JSON` writes a base of the current gold version (the API
starts it in the background when its in-memory changes have grown, and waits for it on a first
start).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from filelock import FileLock

from api.render import Chunk, ConsentStates, RowStore, attribute_groups, fingerprint, newest_event
from pipelines.config import PolicyCfg
from pipelines.lakehouse.catalog import MAP, MERGES, PROFILES
from pipelines.lakehouse.reader import LakeReader

SERVING_DIR = "_serving"  # under the lake root: Delta and VACUUM skip `_` folders
KEPT = 2  # bases kept; an older one may still be mapped by a process, which keeps its pages


def serving_dir(lake: LakeReader) -> Path:
    return lake.root / SERVING_DIR


def key_hash(key: str) -> int:
    """The 64-bit hash an identifier key ("type:value") or a person id is indexed by."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _hashes(keys: list[str]) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64, count=len(keys))


@dataclass(frozen=True)
class Versions:
    """The table versions a base (or a snapshot) was made from; -1: the table did not exist."""

    profiles: int
    identity_map: int
    merges: int

    @classmethod
    def current(cls, lake: LakeReader) -> Versions | None:
        profiles = lake.version(PROFILES)
        if profiles is None:
            return None
        return cls(profiles, _or_none(lake.version(MAP)), _or_none(lake.version(MERGES)))

    def name(self, policy: PolicyCfg) -> str:
        return f"base-{self.profiles}-{self.identity_map}-{self.merges}-{fingerprint(policy)}"


def _or_none(version: int | None) -> int:
    return -1 if version is None else version


class Index:
    """Sorted 64-bit hashes of keys, with each key's row and the key itself to confirm."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table.combine_chunks()  # owns the buffers below
        self.hashes = _numpy(self.table, "hash")
        self.rows = _numpy(self.table, "row")
        self.keys = self.table.column("key").combine_chunks()

    @classmethod
    def build(cls, keys: list[str], rows: np.ndarray) -> Index:
        hashes = _hashes(keys)
        order = np.argsort(hashes, kind="stable")
        return cls(
            pa.table(
                {
                    "hash": pa.array(hashes[order]),
                    "row": pa.array(rows[order].astype(np.int32)),
                    "key": pa.array(keys, pa.large_string()).take(pa.array(order)),
                }
            )
        )

    def get(self, key: str) -> int | None:
        h = np.uint64(key_hash(key))
        i = int(np.searchsorted(self.hashes, h))
        while i < len(self.hashes) and self.hashes[i] == h:
            if self.keys[i].as_py() == key:
                return int(self.rows[i])
            i += 1
        return None


def _numpy(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column)
    return col.chunk(0).to_numpy(zero_copy_only=True) if col.num_chunks else np.array([])


@dataclass(frozen=True)
class Base:
    """One base, mapped: its rendered rows (row i of the store is row i here), the person and
    identifier indexes, and the merges of absorbed persons."""

    versions: Versions
    chunk: Chunk
    states: list[dict[str, object]]
    persons: Index
    identifiers: Index
    merged_into: dict[str, str]
    newest: datetime | None

    def store(self, policy: PolicyCfg) -> RowStore:
        """A row store for snapshots on this base: its rows first, later versions appended."""
        store = RowStore(policy, ConsentStates(policy, self.states))
        store.add(self.chunk)
        return store


def build_base(lake: LakeReader, policy: PolicyCfg, versions: Versions | None = None) -> Path:
    """Render and index gold (the current versions, or `versions`) into a new base folder
    (written under a temporary name, then renamed: a reader never sees half a base); older
    bases beyond KEPT are removed. Returns the folder."""
    versions = versions or Versions.current(lake)
    if versions is None:
        raise FileNotFoundError("gold.profiles does not exist yet: run `cdp run` first")
    root = serving_dir(lake)
    final = root / versions.name(policy)
    if final.exists():
        return final
    profiles = lake.read_polars(PROFILES, version=versions.profiles)
    states = ConsentStates(policy)
    chunk = Chunk.render(profiles, attribute_groups(policy), states)
    person_ids = profiles.get_column("person_id").to_list()
    rows = np.arange(len(person_ids), dtype=np.int32)
    persons = Index.build(person_ids, rows)
    identifiers = _identifier_index(lake, versions, profiles)
    merges = _merges(lake, versions)
    meta = {
        "versions": [versions.profiles, versions.identity_map, versions.merges],
        "states": states.values,
        "newest": _iso(newest_event(profiles)),
        "merged_into": merges,
    }
    temp = root / f".building-{uuid.uuid4().hex}"
    temp.mkdir(parents=True)
    _write(temp / "rows.arrow", chunk.table)
    _write(temp / "persons.arrow", persons.table)
    _write(temp / "identifiers.arrow", identifiers.table)
    (temp / "meta.json").write_text(json.dumps(meta, default=str))
    temp.replace(final)
    _prune(root, policy)
    return final


def _identifier_index(lake: LakeReader, versions: Versions, profiles: pl.DataFrame) -> Index:
    if versions.identity_map < 0:
        return Index.build([], np.array([], dtype=np.int32))
    ids = lake.read_polars(
        MAP,
        ["id_type", "id_value", "person_id"],
        pl.col("valid_to").is_null(),
        version=versions.identity_map,
    )
    rows = profiles.select("person_id", pl.int_range(pl.len(), dtype=pl.Int32).alias("row"))
    held = ids.join(rows, on="person_id").select(
        (pl.col("id_type") + ":" + pl.col("id_value")).alias("key"), "row"
    )
    return Index.build(held.get_column("key").to_list(), held.get_column("row").to_numpy())


def _merges(lake: LakeReader, versions: Versions) -> dict[str, str]:
    if versions.merges < 0:
        return {}
    merges = lake.read_polars(
        MERGES,
        ["from_person_id", "to_person_id"],
        pl.col("change") == "merge",
        version=versions.merges,
    )
    return dict(
        zip(merges["from_person_id"].to_list(), merges["to_person_id"].to_list(), strict=True)
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _write(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))
        sink.flush()
        os.fsync(sink.fileno())


def _read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _prune(root: Path, policy: PolicyCfg) -> None:
    mine = sorted(_bases(root, policy), key=lambda p: p[0], reverse=True)
    for _, old in mine[KEPT:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".building-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # a builder killed long ago
            shutil.rmtree(stale, ignore_errors=True)


def _bases(root: Path, policy: PolicyCfg) -> list[tuple[tuple[int, int, int], Path]]:
    name = re.compile(rf"base-(-?\d+)-(-?\d+)-(-?\d+)-{fingerprint(policy)}")
    found = []
    for path in root.glob("base-*") if root.exists() else []:
        if matched := name.fullmatch(path.name):
            p, m, g = (int(v) for v in matched.groups())
            found.append(((p, m, g), path))
    return found


def newest_base(lake: LakeReader, policy: PolicyCfg, within: Versions) -> Base | None:
    """The newest base of this policy made from versions no later than `within` (a snapshot
    catches up from it), memory-mapped; None when there is none."""
    found = newest_base_versions(lake, policy, within)
    return None if found is None else load_base(serving_dir(lake) / found.name(policy))


def newest_base_versions(lake: LakeReader, policy: PolicyCfg, within: Versions) -> Versions | None:
    """The versions of the newest base `newest_base` would map (nothing is read)."""
    usable = [
        v
        for v, _ in _bases(serving_dir(lake), policy)
        if v[0] <= within.profiles and v[1] <= within.identity_map and v[2] <= within.merges
    ]
    return Versions(*max(usable)) if usable else None


def load_base(path: Path) -> Base:
    meta = json.loads((path / "meta.json").read_text())
    p, m, g = meta["versions"]
    return Base(
        versions=Versions(p, m, g),
        chunk=Chunk.of(_read(path / "rows.arrow")),
        states=meta["states"],
        persons=Index(_read(path / "persons.arrow")),
        identifiers=Index(_read(path / "identifiers.arrow")),
        merged_into=meta["merged_into"],
        newest=datetime.fromisoformat(meta["newest"]) if meta["newest"] else None,
    )


def build_lock(lake: LakeReader) -> FileLock:
    """Held while a base is built: the other processes of the host wait instead of building the
    same one."""
    root = serving_dir(lake)
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".build.lock"))


def builder(lake: LakeReader, policy: PolicyCfg) -> list[str]:
    """The command that builds a base of the current gold version in a process of its own (its
    memory is returned to the system when it ends; the API process never holds a full read)."""
    policy_file = serving_dir(lake) / f"policy-{fingerprint(policy)}.json"
    if not policy_file.exists():
        policy_file.parent.mkdir(parents=True, exist_ok=True)
        temp = policy_file.with_suffix(f".{uuid.uuid4().hex}")
        temp.write_text(policy.model_dump_json())
        temp.replace(policy_file)
    return [sys.executable, "-m", "api.base", str(lake.root), str(policy_file)]


def main(argv: list[str]) -> None:
    """`python -m api.base LAKE_ROOT POLICY_JSON`: build a base of the current gold version."""
    lake = LakeReader(Path(argv[0]))
    policy = PolicyCfg.model_validate_json(Path(argv[1]).read_text())
    with build_lock(lake):
        path = build_base(lake, policy)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
