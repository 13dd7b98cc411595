"""Profiles pre-rendered as JSON for the lookup hot path.

Attributes bound to the same purposes are served or withheld together, for every channel and
consent state, so the policy splits them into a few groups. Polars encodes each profile's groups
as JSON fragments (`"a":1,"b":"x"`) into one Arrow buffer, with the fragment boundaries in a
numpy array (`Chunk`). A lookup picks the row's consent state, the channel's disclosure for it,
and joins the served groups' bytes: no per-attribute Python objects, and the memory is a few
large buffers instead of millions of small objects. A chunk round-trips through Arrow IPC, so
the serving snapshot's base is memory-mapped from a file (api/base.py).

Every profile body comes from here (the current snapshot and the as-of path alike), so a value is
encoded the same way wherever it is served: decimals as strings, times as RFC 3339.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic_core import to_json

from pipelines.config import PolicyCfg
from pipelines.profile.consent import KEY, ChannelRules, Disclosure

TS_KEY = "last_event_ts"


def attribute_groups(policy: PolicyCfg) -> list[tuple[str, ...]]:
    """The served attributes, grouped by their purposes; the key alone comes first."""
    by_purposes: dict[frozenset[str], list[str]] = {}
    for attribute, purposes in policy.attributes.items():
        if attribute != KEY:
            by_purposes.setdefault(frozenset(purposes), []).append(attribute)
    return [(KEY,), *(tuple(names) for names in by_purposes.values())]


def consent_columns(policy: PolicyCfg) -> list[str]:
    """The profile columns a consent state is made of, per purpose: granted and legal basis."""
    return [f"consent_{p}_{k}" for p in policy.purposes for k in ("granted", "legal_basis")]


def fingerprint(policy: PolicyCfg) -> str:
    """Names what a rendering depends on: rendered rows are reusable under an equal policy."""
    return hashlib.blake2b(policy.model_dump_json().encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Rendering:
    """One channel's view of one consent state: the disclosure, the groups it serves, and the
    bytes around the attributes."""

    disclosure: Disclosure
    groups: tuple[int, ...]
    head: bytes  # ,"channel":...,"attributes":{
    middle: bytes  # },"withheld":...,"consent_in_force":...,"profile_version":


class ConsentStates:
    """The distinct consent states (granted and legal basis per purpose) rows are in, numbered
    once per process so that a channel's rendering of a state is worked out once."""

    def __init__(self, policy: PolicyCfg, values: list[dict[str, Any]] | None = None) -> None:
        self.columns = consent_columns(policy)
        self.values: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}
        for v in values or []:
            self._add(v)

    def _add(self, value: dict[str, Any]) -> int:
        key = json.dumps(value, sort_keys=True)
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self.values)
            self.values.append(value)
        return found

    def of(self, frame: pl.DataFrame) -> np.ndarray:
        """The state id of every row of `frame` (new states are numbered as they come)."""
        present = [c for c in self.columns if c in frame.columns]
        if not present:
            return np.full(frame.height, self._add({}), dtype=np.int32)
        distinct = frame.select(present).unique(maintain_order=True)
        ids = [self._add(v) for v in distinct.to_dicts()]
        numbered = distinct.with_columns(pl.Series("_state", ids, dtype=pl.Int32))
        return (
            frame.select(present)
            .with_row_index("_row")
            .join(numbered, on=present, how="left", nulls_equal=True)
            .sort("_row")
            .get_column("_state")
            .to_numpy()
        )


@dataclass(frozen=True)
class Chunk:
    """Rendered rows: person ids, JSON fragments with their bounds, consent state, version."""

    person_ids: pa.Array
    bounds: np.ndarray  # (rows, groups + 1) offsets into data: group g is [g, g + 1)
    data: memoryview
    states: np.ndarray  # int32 ids in the process's ConsentStates
    versions: np.ndarray  # int64 profile_version
    table: pa.Table  # owns the buffers above

    @classmethod
    def render(
        cls, frame: pl.DataFrame, groups: list[tuple[str, ...]], states: ConsentStates
    ) -> Chunk:
        """Encode `frame`'s profiles (gold.profiles columns) group by group."""
        fragments = [
            pl.struct(list(names))
            .struct.json_encode()
            .str.strip_prefix("{")
            .str.strip_suffix("}")
            .alias(f"g{i}")
            for i, names in enumerate(groups)
        ]
        encoded = frame.select(fragments)
        lengths = encoded.select(pl.all().str.len_bytes()).to_numpy().astype(np.int64)
        blob = encoded.select(pl.concat_str(pl.all()).alias("row")).get_column("row")
        array = blob.to_arrow().cast(pa.large_string())
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        offsets = array.buffers()[1]
        row_start = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array)]
        bounds = np.zeros((frame.height, len(groups) + 1), dtype=np.int64)
        bounds[:, 0] = row_start
        bounds[:, 1:] = np.cumsum(lengths, axis=1) + row_start[:, None]
        if frame.height:
            bounds -= row_start[0]  # relative to the first row's bytes: see `of`
        table = pa.table(
            {
                "person_id": frame.get_column(KEY).to_arrow().cast(pa.large_string()),
                "blob": array,
                "bounds": pa.FixedSizeListArray.from_arrays(
                    pa.array(bounds.reshape(-1)), len(groups) + 1
                ),
                "state": pa.array(states.of(frame), pa.int32()),
                "profile_version": frame.get_column("profile_version").to_arrow().cast(pa.int64()),
            }
        )
        return cls.of(table)

    @classmethod
    def of(cls, table: pa.Table) -> Chunk:
        """A chunk over `table`'s buffers (a rendered table, or one memory-mapped from IPC):
        nothing is copied."""
        table = table.combine_chunks()
        blob = table.column("blob").chunk(0) if table.num_rows else pa.array([], pa.large_string())
        _, offsets, data = blob.buffers()
        first = int(np.frombuffer(offsets, dtype=np.int64)[blob.offset]) if len(blob) else 0
        bounds_col = table.column("bounds")
        width = bounds_col.type.list_size
        flat = bounds_col.chunk(0).values if table.num_rows else pa.array([], pa.int64())
        bounds = flat.to_numpy(zero_copy_only=True).reshape(-1, width)
        return cls(
            person_ids=table.column("person_id").combine_chunks(),
            bounds=bounds,
            data=memoryview(data)[first:] if data is not None else memoryview(b""),
            states=table.column("state").to_numpy(),
            versions=table.column("profile_version").to_numpy(),
            table=table,
        )

    def __len__(self) -> int:
        return len(self.versions)


class Served(Protocol):
    """What a body is rendered from: rows of one snapshot version (or of one as-of read)."""

    @property
    def version(self) -> int: ...

    def body(self, row: int, rules: ChannelRules) -> tuple[bytes, Disclosure]: ...

    def person_id(self, row: int) -> str: ...

    def version_of(self, row: int) -> int: ...


class RowStore:
    """Every rendered row a process holds, in chunks appended as gold versions arrive; a row is
    never changed once written, so a request holding a row number is never surprised."""

    def __init__(self, policy: PolicyCfg, states: ConsentStates | None = None) -> None:
        self.groups = attribute_groups(policy)
        self.states = states or ConsentStates(policy)
        self._chunks: list[Chunk] = []
        self._starts: list[int] = []
        self._size = 0
        self._renderings: dict[tuple[str, int], Rendering] = {}

    def __len__(self) -> int:
        return self._size

    def render(self, frame: pl.DataFrame) -> int:
        """Render and append `frame`'s rows; the row number of its first."""
        return self.add(Chunk.render(frame, self.groups, self.states))

    def add(self, chunk: Chunk) -> int:
        first = self._size
        self._chunks.append(chunk)
        self._starts.append(first)
        self._size += len(chunk)
        return first

    def _at(self, row: int) -> tuple[Chunk, int]:
        i = bisect.bisect_right(self._starts, row) - 1
        return self._chunks[i], row - self._starts[i]

    def person_id(self, row: int) -> str:
        chunk, i = self._at(row)
        return str(chunk.person_ids[i].as_py())

    def version_of(self, row: int) -> int:
        chunk, i = self._at(row)
        return int(chunk.versions[i])

    def consent(self, row: int) -> dict[str, Any]:
        """The row's consent columns (granted and legal basis per purpose)."""
        chunk, i = self._at(row)
        return self.states.values[int(chunk.states[i])]

    def body(self, row: int, rules: ChannelRules, tail: bytes) -> tuple[bytes, Disclosure]:
        """The ProfilePublic JSON of one row for one channel (`tail` closes it with the
        snapshot's fields), and what it disclosed."""
        chunk, i = self._at(row)
        state = int(chunk.states[i])
        rendering = self._renderings.get((rules.channel, state))
        if rendering is None:
            rendering = self._rendering(rules, state)
        bounds, data = chunk.bounds[i].tolist(), chunk.data
        attributes = b",".join([data[bounds[g] : bounds[g + 1]] for g in rendering.groups])
        return (
            b"".join(
                (
                    b'{"person_id":"',
                    str(chunk.person_ids[i].as_py()).encode(),
                    rendering.head,
                    attributes,
                    rendering.middle,
                    str(int(chunk.versions[i])).encode(),
                    tail,
                )
            ),
            rendering.disclosure,
        )

    def _rendering(self, rules: ChannelRules, state: int) -> Rendering:
        values = self.states.values[state]
        disclosure = rules.disclosure(
            tuple(values.get(c) is True for c in rules.granted_columns),
            tuple(values.get(c) for c in rules.basis_columns),
        )
        served = set(disclosure.served)
        chosen = tuple(i for i, names in enumerate(self.groups) if served.issuperset(names))
        rendering = Rendering(
            disclosure,
            chosen,
            b'","channel":' + to_json(rules.channel) + b',"attributes":{',
            b'},"withheld":'
            + to_json(disclosure.withheld_public)
            + b',"consent_in_force":'
            + to_json(disclosure.consent_used)
            + b',"profile_version":',
        )
        self._renderings[(rules.channel, state)] = rendering
        return rendering


def newest_event(frame: pl.DataFrame) -> datetime | None:
    """The newest `last_event_ts` of `frame` (None when it has none)."""
    value = frame.get_column(TS_KEY).max() if TS_KEY in frame.columns else None
    return value if isinstance(value, datetime) else None


def tail(version: int, newest: datetime | None) -> bytes:
    """The end of every body of a snapshot version: its number and its newest event time."""
    frame = pl.DataFrame({TS_KEY: [newest]}, schema={TS_KEY: pl.Datetime("us", "UTC")})
    encoded = frame.select(pl.struct(TS_KEY).struct.json_encode()).item()
    return f',"snapshot_version":{version},{encoded[1:-1]}}}'.encode()


class RowsServed:
    """Bodies of a row store's rows closed by one tail: what one snapshot version serves. The
    class using it has `store` (a RowStore) and `tail` (bytes)."""

    store: RowStore
    tail: bytes

    def body(self, row: int, rules: ChannelRules) -> tuple[bytes, Disclosure]:
        return self.store.body(row, rules, self.tail)

    def person_id(self, row: int) -> str:
        return self.store.person_id(row)

    def version_of(self, row: int) -> int:
        return self.store.version_of(row)

    def consent(self, row: int) -> dict[str, Any]:
        return self.store.consent(row)


class RenderedProfiles(RowsServed):
    """The profiles of one frame (one row as it was, for the as-of path) as JSON fragments."""

    def __init__(self, frame: pl.DataFrame, policy: PolicyCfg, version: int) -> None:
        self.version = version
        self.store = RowStore(policy)
        self.store.render(frame)
        self.tail = tail(version, newest_event(frame))

    def __len__(self) -> int:
        return len(self.store)
