"""The serving snapshot follows gold version by version from the Change Data Feed and serves
exactly what a snapshot read afresh at the same versions serves: every body, every identifier's
holder (recycled numbers, merges, new and removed persons). A rewrite of gold starts it again
from a base; a second process starts from the base on disk without reading gold."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from api.base import Versions, build_base, load_base, serving_dir
from api.render import RenderedProfiles
from api.snapshot import Snapshot, SnapshotHolder, advanced, on_base
from pipelines.lakehouse.catalog import MAP, PROFILES
from pipelines.lakehouse.lake import Lake
from pipelines.lakehouse.reader import LakeReader
from pipelines.profile.consent import compile_rules

pytestmark = pytest.mark.api


def _expected(lake: LakeReader, versions: Versions) -> tuple[pl.DataFrame, dict[str, str | None]]:
    """Gold as read directly at `versions`: the profiles, and every identifier the map ever
    held (up to its version) with its holder now (None: closed, or the holder has no profile)."""
    profiles = lake.read_polars(PROFILES, version=versions.profiles)
    every = lake.read_polars(MAP, ["id_type", "id_value", "person_id", "valid_to"])
    at = lake.read_polars(MAP, version=versions.identity_map)
    held = set(profiles["person_id"].to_list())
    holders: dict[str, str | None] = {
        f"{t}:{v}": None for t, v in every.select("id_type", "id_value").iter_rows()
    }
    for t, v, p in (
        at.filter(pl.col("valid_to").is_null())
        .select("id_type", "id_value", "person_id")
        .iter_rows()
    ):
        holders[f"{t}:{v}"] = p if p in held else None
    return profiles, holders


def _assert_serves(snap: Snapshot, lake: LakeReader, policy: Any) -> None:
    profiles, holders = _expected(lake, snap.versions)
    fresh = RenderedProfiles(profiles, policy, snap.version)
    rules = compile_rules(policy)
    for i, person in enumerate(profiles["person_id"].to_list()):
        row = snap.row_of(person)
        assert row is not None, f"{person} has a profile at {snap.versions}"
        for channel, r in rules.items():
            assert snap.body(row, r) == fresh.body(i, r), (person, channel, snap.versions)
    for key, holder in holders.items():
        id_type, _, value = key.partition(":")
        row = snap.row_of_key(id_type, value)
        got = None if row is None else snap.person_id(row)
        assert got == holder, (key, snap.versions)


def test_versions_applied_one_by_one_serve_what_a_fresh_read_serves(
    operator: dict[str, Any], tmp_path: Path
) -> None:
    shutil.copytree(operator["settings"].paths.lake_root, tmp_path / "lake")
    lake, policy = LakeReader(tmp_path / "lake"), operator["settings"].policy
    last = Versions.current(lake)
    assert last is not None and last.profiles >= 5 and last.identity_map >= 5
    first = Versions(0, 0, 0 if last.merges >= 0 else -1)
    snap = on_base(lake, load_base(build_base(lake, policy, first)), policy)
    steps = max(last.profiles, last.identity_map, last.merges)
    merged = 0
    for k in range(1, steps + 1):
        target = Versions(min(k, last.profiles), min(k, last.identity_map), min(k, last.merges))
        moved = advanced(lake, snap, target)
        assert moved is not None, f"{target}: every version of the operator is a MERGE or append"
        snap = moved
        merged = len(snap.merged_into)
        if k % 4 == 0 or k == steps:  # a full comparison costs a second
            _assert_serves(snap, lake, policy)
    assert snap.changed_rows > 0 and snap.keys and merged


def test_a_rewrite_starts_again_from_a_base_and_a_new_process_starts_from_it(
    operator: dict[str, Any], tmp_path: Path
) -> None:
    shutil.copytree(operator["settings"].paths.lake_root, tmp_path / "lake")
    lake, policy = LakeReader(tmp_path / "lake"), operator["settings"].policy
    holder = SnapshotHolder(lake, policy)
    assert holder.refresh() and holder.full_loads == 1
    assert not holder.refresh()  # nothing new

    writer = Lake(tmp_path / "lake")
    rows = writer.read_arrow(PROFILES)
    writer.overwrite(PROFILES, rows.slice(1), stage="test")  # a rebuild that drops one person
    assert holder.refresh() and holder.full_loads == 2
    current = holder.current
    assert current is not None and current.row_of(rows["person_id"][0].as_py()) is None
    _assert_serves(current, lake, policy)

    bases = sorted(p.name for p in serving_dir(lake).glob("base-*"))
    second = SnapshotHolder(lake, policy)
    assert second.refresh()
    assert sorted(p.name for p in serving_dir(lake).glob("base-*")) == bases  # built nothing
    assert second.current is not None and second.current.versions == current.versions
    _assert_serves(second.current, lake, policy)


def test_grown_changes_are_folded_into_a_new_base_in_the_background(
    operator: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.snapshot

    monkeypatch.setattr(api.snapshot, "REBUILD_MIN_ROWS", 0)  # any change starts a new base
    shutil.copytree(operator["settings"].paths.lake_root, tmp_path / "lake")
    lake, policy = LakeReader(tmp_path / "lake"), operator["settings"].policy
    first = Versions.current(lake)
    assert first is not None
    build_base(lake, policy, Versions(first.profiles - 2, first.identity_map, first.merges))
    holder = SnapshotHolder(lake, policy)
    assert holder.refresh() and holder.full_loads == 1  # from the older base, two versions applied
    assert holder.current is not None and holder.current.changed_rows > 0
    assert holder._builder is not None and holder._builder.wait(timeout=120) == 0
    assert holder.refresh() and holder.full_loads == 2  # the new base, adopted
    assert holder.current is not None and holder.current.changed_rows == 0
    assert holder.current.base.versions == first
    _assert_serves(holder.current, lake, policy)
