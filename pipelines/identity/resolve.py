"""Resolution: evidence rows -> tenure-scoped identity nodes, links with a status, and persons.

`resolve` is a pure function of the evidence rows of whole *regions* (connected components of
the value graph formed by merge evidence, ignoring tenures and refusals). Regions never interact,
so the full recompute (Spark partitions by region and calls `resolve` per partition) and the
incremental path (the driver gathers the regions a micro-batch touches and calls `resolve` once)
give the same answer by construction; tests check it anyway.

Inside a region:
1. every identifier of a recyclable type gets the tenure open at the event time (the latest
   opening event not after it); a node is `type:value` or `type:value@tenure-start`;
2. evidence rows become links, one per (rule, node, node), keeping the first event as lineage
   (a link's row does not change when the same evidence repeats, so a micro-batch of repeated
   logins rewrites nothing);
3. merge links are applied strongest tier first, earliest seen first; a link that touches a
   blocked value, or would break a guardrail, is refused with the reason;
4. a person's id derives from its earliest-seen node (ingest order), so a person keeps its id as
   it grows, the earlier person's id survives a merge, the side holding the earliest node keeps
   it on a split, and no id is ever given to a person that does not hold its founding node.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import IdentityCfg

NO_TENURE = -(2**62)  # the tenure before any opening event of that identifier is known
TS = pa.timestamp("us", tz="UTC")

LINKS_SCHEMA = pa.schema(
    [
        ("region", pa.string()),
        ("edge_key", pa.string()),
        ("rule", pa.string()),
        ("kind", pa.string()),
        ("tier", pa.int32()),
        ("a_type", pa.string()),
        ("a_value", pa.string()),
        ("a_tenure", TS),
        ("a_node", pa.string()),
        ("b_type", pa.string()),
        ("b_value", pa.string()),
        ("b_tenure", TS),
        ("b_node", pa.string()),
        ("role", pa.string()),
        ("account_type", pa.string()),
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("event_type", pa.string()),
        ("first_ingest_ts", TS),
        ("valid_from", TS),
        ("valid_to", TS),
        ("status", pa.string()),
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("person_id", pa.string()),
        ("b_person_id", pa.string()),
    ]
)

NODES_SCHEMA = pa.schema(
    [
        ("region", pa.string()),
        ("node_key", pa.string()),
        ("id_type", pa.string()),
        ("id_value", pa.string()),
        ("tenure", TS),
        ("person_id", pa.string()),
        ("account_id", pa.string()),
        ("account_type", pa.string()),
        ("role", pa.string()),
        ("valid_from", TS),
        ("valid_to", TS),
        ("first_seen", TS),
    ]
)


def value_key(id_type: str, value: str) -> str:
    return f"{id_type}:{value}"


def person_id_of(founding_node: str) -> str:
    """80 bits of a hash of the founding node: distinct nodes give distinct ids in practice, and
    the same node gives the same id in every run, full or incremental."""
    return "P" + hashlib.blake2b(founding_node.encode(), digest_size=10).hexdigest()


@lru_cache(maxsize=1 << 16)
def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Blocklist:
    """Blocked values from conf: exact values and anchored patterns per identifier type."""

    def __init__(self, cfg: IdentityCfg) -> None:
        self.values = {t: set(vs) for t, vs in cfg.blocked.values.items()}
        self.patterns = {t: [re.compile(p) for p in ps] for t, ps in cfg.blocked.patterns.items()}

    def reason(self, id_type: str | None, value: str | None) -> str | None:
        if id_type is None or value is None:
            return None
        if value in self.values.get(id_type, ()):
            return f"{id_type} {value!r} is blocked (conf/identity.yaml blocked.values.{id_type})"
        for p in self.patterns.get(id_type, ()):
            if p.search(value):
                return (
                    f"{id_type} {value!r} matches blocked pattern {p.pattern!r} "
                    f"(conf/identity.yaml blocked.patterns.{id_type})"
                )
        return None


class _Find:
    """Union-find over hashable keys with path halving."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        p = parent.get(x)
        if p is None:
            parent[x] = x
            return x
        while p != x:
            grand = parent[p]
            parent[x] = grand
            x, p = grand, parent[grand]
        return x

    def union(self, x: str, y: str) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)  # the root is the smallest key


def regions_of(evidence: pa.Table, blocked: Blocklist) -> list[str]:
    """The region of each evidence row: its anchor's component in the graph of merge evidence
    between non-blocked values (the anchor is `a`, or `b` when `a` is blocked).

    A region is named after its first-seen value (ingest time, then event id, then key), so the
    name stays when the region grows and only changes when it merges with an older one."""
    kinds = evidence.column("kind").to_pylist()
    at, av = evidence.column("a_type").to_pylist(), evidence.column("a_value").to_pylist()
    bt, bv = evidence.column("b_type").to_pylist(), evidence.column("b_value").to_pylist()
    ingest = _micros(evidence.column("ingest_ts"))
    event_id = evidence.column("event_id").to_pylist()
    uf = _Find()
    first: dict[str, tuple[int, str]] = {}
    anchors: list[str] = []
    for i, kind in enumerate(kinds):
        seen = (ingest[i] or 0, event_id[i])
        ka = value_key(at[i], av[i])
        kb = value_key(bt[i], bv[i]) if bv[i] is not None else None
        for k in (ka, kb):
            if k is not None and (k not in first or seen < first[k]):
                first[k] = seen
        a_blocked = blocked.reason(at[i], av[i]) is not None
        b_blocked = kb is None or blocked.reason(bt[i], bv[i]) is not None
        if kind == "merge" and not a_blocked and not b_blocked:
            uf.union(ka, kb)  # type: ignore[arg-type]
        anchors.append(kb if a_blocked and not b_blocked else ka)  # type: ignore[arg-type]
    name: dict[str, tuple[tuple[int, str], str]] = {}
    for k in uf.parent:
        root = uf.find(k)
        candidate = (first[k], k)
        if root not in name or candidate < name[root]:
            name[root] = candidate
    return [name[uf.find(k)][1] if k in uf.parent else k for k in anchors]


@dataclass
class _Tenures:
    """Openings and closings per recyclable identifier value, in event-time microseconds."""

    recyclable: frozenset[str]
    opens: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    closes: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))

    def start(self, id_type: str, value: str, ts: int) -> int | None:
        """Start of the tenure open at `ts` (NO_TENURE before the first known opening)."""
        if id_type not in self.recyclable:
            return None
        starts = self.opens.get((id_type, value), [])
        i = bisect_right(starts, ts) - 1
        return starts[i] if i >= 0 else NO_TENURE

    def end(self, id_type: str, value: str, start: int | None) -> int | None:
        """First closing inside the tenure starting at `start` (None: still open)."""
        if start is None:
            return None
        starts = self.opens.get((id_type, value), [])
        nxt = (
            starts[bisect_right(starts, start)]
            if bisect_right(starts, start) < len(starts)
            else None
        )
        for c in self.closes.get((id_type, value), []):
            if c >= start and (nxt is None or c < nxt):
                return c
        return None


def node_key(id_type: str, value: str, tenure: int | None) -> str:
    if tenure is None:
        return value_key(id_type, value)
    return f"{id_type}:{value}@{'-' if tenure == NO_TENURE else _iso(tenure)}"


@dataclass(slots=True)
class _Link:
    first: int  # row index of the first evidence (ingest order)
    valid_from: int = 0
    status: str = ""
    reason_code: str | None = None
    reason: str | None = None


@dataclass(slots=True)
class _Person:
    """Guardrail state of a growing person (held at its union-find root)."""

    size: int
    values: dict[str, set[str]]
    shared_lines: dict[str, set[str]]  # account -> line values on family/corporate accounts


@dataclass(frozen=True)
class Resolution:
    links: pa.Table
    nodes: pa.Table


def _micros(col: pa.ChunkedArray) -> list[int | None]:
    values: list[int | None] = pc.cast(col, pa.int64()).to_pylist()
    return values


def resolve(evidence: pa.Table, cfg: IdentityCfg) -> Resolution:  # noqa: C901 - one pass, read top-down
    """Links (with status and reason) and nodes (with person ids) of the regions in `evidence`.

    `evidence` must hold every evidence row of each region it touches (see module docstring).
    """
    blocked = Blocklist(cfg)
    guard = cfg.guardrails
    n = evidence.num_rows
    regions = regions_of(evidence, blocked)
    kind = evidence.column("kind").to_pylist()
    rule = evidence.column("rule").to_pylist()
    tier = evidence.column("tier").to_pylist()
    at, av = evidence.column("a_type").to_pylist(), evidence.column("a_value").to_pylist()
    bt, bv = evidence.column("b_type").to_pylist(), evidence.column("b_value").to_pylist()
    role = evidence.column("role").to_pylist()
    acc_type = evidence.column("account_type").to_pylist()
    evidence.column("event_id").to_pylist()
    evidence.column("source").to_pylist()
    evidence.column("event_type").to_pylist()
    vfrom, vto = _micros(evidence.column("valid_from")), _micros(evidence.column("valid_to"))
    # Every row has an event time: links and openings in valid_from, closings in valid_to.
    event_time: list[int] = [
        v if v is not None else (w or 0) for v, w in zip(vfrom, vto, strict=True)
    ]
    ingest: list[int] = [v or 0 for v in _micros(evidence.column("ingest_ts"))]
    keyed = pa.table(
        {
            "ingest": pa.array(ingest, pa.int64()),
            "time": pa.array(event_time, pa.int64()),
            "event_id": evidence.column("event_id"),
            "rule": pc.fill_null(evidence.column("rule"), ""),
        }
    )
    order: list[int] = pc.sort_indices(
        keyed, [(c, "ascending") for c in ("ingest", "time", "event_id", "rule")]
    ).to_pylist()
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r

    tenures = _Tenures(frozenset(cfg.tenures))
    for i in range(n):
        if kind[i] == "opens":
            tenures.opens[(at[i], av[i])].append(event_time[i])
        elif kind[i] == "closes":
            tenures.closes[(at[i], av[i])].append(event_time[i])
    for lst in (*tenures.opens.values(), *tenures.closes.values()):
        lst.sort()

    # Links, one per (rule, node, node); nodes with the earliest evidence that mentions them.
    links: dict[str, _Link] = {}
    link_nodes: dict[str, tuple[str, int | None, str, int | None, str]] = {}
    node_info: dict[str, tuple[str, str, int | None, int]] = {}  # type, value, tenure, rank
    node_region: dict[str, str] = {}
    for i in order:
        if kind[i] not in ("merge", "member"):
            continue
        ta = tenures.start(at[i], av[i], event_time[i])
        tb = tenures.start(bt[i], bv[i], event_time[i]) if kind[i] == "merge" else None
        na, nb = node_key(at[i], av[i], ta), node_key(bt[i], bv[i], tb)
        key = f"{rule[i]}|{na}|{nb}"
        link = links.get(key)
        if link is None:
            links[key] = _Link(first=i, valid_from=event_time[i])
            link_nodes[key] = (na, ta, nb, tb, regions[i])
        else:
            link.valid_from = min(link.valid_from, event_time[i])
        ends = [(na, at[i], av[i], ta)]
        if kind[i] == "merge":
            ends.append((nb, bt[i], bv[i], tb))
        for nk, t, v, ten in ends:
            if nk not in node_info and blocked.reason(t, v) is None:
                node_info[nk] = (t, v, ten, rank[i])
                node_region[nk] = regions[i]

    # Account context of line and account nodes: from the first link that states it.
    context: dict[str, tuple[str, str | None, str | None]] = {}
    for key, link in links.items():
        i = link.first
        na, _, nb, _, _ = link_nodes[key]
        if kind[i] == "member" or bt[i] == "account_id":
            context.setdefault(na, (bv[i], acc_type[i], role[i]))
            if kind[i] == "merge":
                context.setdefault(nb, (bv[i], acc_type[i], "holder"))

    people: dict[str, _Person] = {}
    for nk, (t, v, _, _) in node_info.items():
        shared: dict[str, set[str]] = {}
        line_ctx = context.get(nk)
        if t == "msisdn" and line_ctx and line_ctx[1] in guard.one_line_per_person_on:
            shared[line_ctx[0]] = {v}
        people[nk] = _Person(1, {t: {v}}, shared)
    uf = _Find()

    def refusal(pa_: _Person, pb: _Person) -> tuple[str, str] | None:
        if pa_.size + pb.size > guard.max_component_size:
            return (
                "max_component_size",
                f"would make a person of {pa_.size + pb.size} identifiers; max "
                f"{guard.max_component_size} (guardrails.max_component_size)",
            )
        for t, limit in guard.max_per_person.items():
            both = pa_.values.get(t, set()) | pb.values.get(t, set())
            if len(both) > limit:
                shown = ", ".join(sorted(both)[:4])
                return (
                    "max_per_person",
                    f"would give one person {len(both)} {t} values ({shown}); max {limit} "
                    f"(guardrails.max_per_person.{t})",
                )
        for acct in pa_.shared_lines.keys() & pb.shared_lines.keys():
            lines = ", ".join(sorted(pa_.shared_lines[acct] | pb.shared_lines[acct])[:4])
            return (
                "shared_account",
                f"would merge the users of different lines ({lines}) of account {acct}, whose "
                "lines belong to different people (guardrails.one_line_per_person_on)",
            )
        return None

    merge_order = sorted(
        (tier[link.first], rank[link.first], k)
        for k, link in links.items()
        if kind[link.first] == "merge"
    )
    for _, _, key in merge_order:
        link = links[key]
        i = link.first
        why = blocked.reason(at[i], av[i]) or blocked.reason(bt[i], bv[i])
        if why:
            link.status, link.reason_code, link.reason = "refused", "blocked", why
            continue
        na, _, nb, _, _ = link_nodes[key]
        ra, rb = uf.find(na), uf.find(nb)
        if ra == rb:
            link.status = "accepted"
            continue
        refused = refusal(people[ra], people[rb])
        if refused:
            link.status = "refused"
            link.reason_code, link.reason = refused
            continue
        uf.union(ra, rb)
        root, other = (ra, rb) if uf.find(ra) == ra else (rb, ra)
        keep, gone = people[root], people.pop(other)
        keep.size += gone.size
        for t, vs in gone.values.items():
            keep.values.setdefault(t, set()).update(vs)
        for acct, lines in gone.shared_lines.items():
            keep.shared_lines.setdefault(acct, set()).update(lines)
        link.status = "accepted"
    for link in links.values():
        if not link.status:
            link.status = "member"

    roots = {nk: uf.find(nk) for nk in node_info}
    founder: dict[str, tuple[int, str]] = {}
    for nk, (_, _, _, r) in node_info.items():
        root = roots[nk]
        known = founder.get(root)
        if known is None or (r, nk) < known:
            founder[root] = (r, nk)
    pid_of_root = {root: person_id_of(f[1]) for root, f in founder.items()}
    person = {nk: pid_of_root[root] for nk, root in roots.items()}

    def ts(us: int | None) -> int | None:
        return None if us is None or us == NO_TENURE else us

    # Row-level columns come from each link's first evidence row; the rest is per link.
    keys = list(links)
    firsts = [links[k].first for k in keys]
    taken = evidence.take(pa.array(firsts, pa.int64()))
    per_link: dict[str, list[object]] = {
        name: []
        for name in (
            "region",
            "a_tenure",
            "a_node",
            "b_tenure",
            "b_node",
            "valid_from",
            "valid_to",
            "status",
            "reason_code",
            "reason",
            "person_id",
            "b_person_id",
        )
    }
    for key in keys:
        link = links[key]
        i = link.first
        na, ta, nb, tb, region = link_nodes[key]
        closed = [tenures.end(at[i], av[i], ta), tenures.end(bt[i], bv[i], tb)]
        per_link["region"].append(region)
        per_link["a_tenure"].append(ts(ta))
        per_link["a_node"].append(na)
        per_link["b_tenure"].append(ts(tb))
        per_link["b_node"].append(nb)
        per_link["valid_from"].append(link.valid_from)
        per_link["valid_to"].append(min((e for e in closed if e is not None), default=None))
        per_link["status"].append(link.status)
        per_link["reason_code"].append(link.reason_code)
        per_link["reason"].append(link.reason)
        per_link["person_id"].append(person.get(na))
        per_link["b_person_id"].append(person.get(nb) if kind[i] == "merge" else None)
    link_columns: dict[str, object] = {"edge_key": keys, **per_link}
    for name in (
        "rule",
        "kind",
        "tier",
        "a_type",
        "a_value",
        "b_type",
        "b_value",
        "role",
        "account_type",
        "event_id",
        "source",
        "event_type",
    ):
        link_columns[name] = taken.column(name)
    link_columns["first_ingest_ts"] = taken.column("ingest_ts")

    node_rows: dict[str, list[object]] = {name: [] for name in NODES_SCHEMA.names}
    first_link_time: dict[str, int] = {}
    for key, link in links.items():
        na, _, nb, _, _ = link_nodes[key]
        for nk in (na, nb):
            first_link_time[nk] = min(first_link_time.get(nk, link.valid_from), link.valid_from)
    for nk, (t, v, ten, r) in node_info.items():
        ctx: tuple[str | None, str | None, str | None] = context.get(nk, (None, None, None))
        node_rows["region"].append(node_region[nk])
        node_rows["node_key"].append(nk)
        node_rows["id_type"].append(t)
        node_rows["id_value"].append(v)
        node_rows["tenure"].append(ts(ten))
        node_rows["person_id"].append(person[nk])
        node_rows["account_id"].append(ctx[0])
        node_rows["account_type"].append(ctx[1])
        node_rows["role"].append(ctx[2])
        node_rows["valid_from"].append(ts(ten) if ts(ten) is not None else first_link_time[nk])
        node_rows["valid_to"].append(tenures.end(t, v, ten))
        node_rows["first_seen"].append(ingest[order[r]])
    return Resolution(_table(link_columns, LINKS_SCHEMA), _table(node_rows, NODES_SCHEMA))


def _table(columns: Mapping[str, object], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        values = columns[f.name]
        if isinstance(values, pa.ChunkedArray | pa.Array):
            arrays.append(values.cast(f.type))
        elif pa.types.is_timestamp(f.type):
            arrays.append(pc.cast(pa.array(values, pa.int64()), f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
