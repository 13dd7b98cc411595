"""Profiles pre-rendered as JSON for the lookup hot path.

Attributes bound to the same purposes are served or withheld together, for every channel and
consent state, so the policy splits them into a few groups. At load, Polars encodes each
profile's groups as JSON fragments (`"a":1,"b":"x"`) into one Arrow buffer, with the fragment
boundaries in a numpy array. A lookup picks the row's consent state, the channel's disclosure
for it, and joins the served groups' bytes: no per-attribute Python objects, and the memory is a
few large buffers instead of millions of small objects.

Every profile body comes from here (the current snapshot and the as-of path alike), so a value is
encoded the same way wherever it is served: decimals as strings, times as RFC 3339.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rendering:
    """One channel's view of one consent state: the disclosure, the groups it serves, and the
    bytes around the attributes."""

    disclosure: Disclosure
    groups: tuple[int, ...]
    head: bytes  # ,"channel":...,"attributes":{
    middle: bytes  # },"withheld":...,"consent_in_force":...,"profile_version":


class RenderedProfiles:
    """The profiles of one frame (a snapshot version, or one row as it was) as JSON fragments."""

    def __init__(self, frame: pl.DataFrame, policy: PolicyCfg, version: int) -> None:
        self.version = version
        groups = attribute_groups(policy)
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
        blob = encoded.select(pl.concat_str(pl.all()).alias("row")).get_column("row").rechunk()
        array = blob.to_arrow().cast(pa.large_string())
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        _, offsets, data = array.buffers()
        row_start = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array)]
        ends = np.cumsum(lengths, axis=1) + row_start[:, None]
        self._starts = ends - lengths
        self._ends = ends
        self._data = memoryview(data) if data is not None else memoryview(b"")
        self._keep = array  # the buffers above belong to it

        purposes = list(policy.purposes)
        consent = [f"consent_{p}_{k}" for p in purposes for k in ("granted", "legal_basis")]
        present = [c for c in consent if c in frame.columns]
        states = frame.select(present).unique(maintain_order=True).with_row_index("state")
        self._state_of = (
            frame.select(present)
            .with_row_index("row")
            .join(states, on=present, how="left", nulls_equal=True)
            .sort("row")
            .get_column("state")
            .to_numpy()
        )
        self._states = states.drop("state").to_dicts()
        self.person_ids: list[str] = frame.get_column(KEY).to_list()
        self._versions = frame.get_column("profile_version").to_numpy()
        newest = frame.select(pl.struct(pl.col(TS_KEY).max()).struct.json_encode()).item()
        self._tail = f',"snapshot_version":{version},{newest[1:-1]}}}'.encode()
        self._groups = groups
        self._renderings: dict[tuple[str, int], Rendering] = {}

    def __len__(self) -> int:
        return len(self.person_ids)

    def body(self, row: int, rules: ChannelRules) -> tuple[bytes, Disclosure]:
        """The ProfilePublic JSON of one row for one channel, and what it disclosed."""
        state = int(self._state_of[row])
        rendering = self._renderings.get((rules.channel, state))
        if rendering is None:
            rendering = self._rendering(rules, state)
        starts, ends, data = self._starts[row].tolist(), self._ends[row].tolist(), self._data
        attributes = b",".join([data[starts[g] : ends[g]] for g in rendering.groups])
        version = int(self._versions[row])
        person = self.person_ids[row]
        return (
            b"".join(
                (
                    b'{"person_id":"',
                    person.encode(),
                    rendering.head,
                    attributes,
                    rendering.middle,
                    str(version).encode(),
                    self._tail,
                )
            ),
            rendering.disclosure,
        )

    def version_of(self, row: int) -> int:
        return int(self._versions[row])

    def _rendering(self, rules: ChannelRules, state: int) -> Rendering:
        values = self._states[state]
        disclosure = rules.disclosure(
            tuple(values.get(c) is True for c in rules.granted_columns),
            tuple(values.get(c) for c in rules.basis_columns),
        )
        served = set(disclosure.served)
        chosen = tuple(i for i, names in enumerate(self._groups) if served.issuperset(names))
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
