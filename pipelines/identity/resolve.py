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
3. merge links are applied strongest tier first, then in event-time order (event id breaks
   ties); a link that touches a blocked value, or would break a guardrail, is refused with the
   reason;
4. a person's id derives from its earliest node by event time, so a person keeps its id as it
   grows, the older person's id survives a merge, the side holding the earliest node keeps it on
   a split, and no id is ever given to a person that does not hold its founding node.

Order is the events' own time, never the time they arrived: the same evidence gives the same
persons and ids however it was batched, so a rebuilt lake, a restarted run and a replay agree.
(A late event older than anything in its person can make it the founder: the id then moves, and
the move is recorded in gold.person_merges like any other.)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import IdentityCfg

NO_TENURE = -(2**62)  # the tenure before any opening event of that identifier is known
TS = pa.timestamp("us", tz="UTC")
UTC_MICROS = pl.Datetime("us", "UTC")

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


PERSON_ID_PATTERN = r"^P[0-9a-f]{20}$"  # what person_id_of makes; every API input is checked


def is_person_id(value: str) -> bool:
    return re.fullmatch(PERSON_ID_PATTERN, value) is not None


def person_id_of(founding_node: str) -> str:
    """80 bits of a hash of the founding node: distinct nodes give distinct ids in practice, and
    the same node gives the same id in every run, full or incremental."""
    return "P" + hashlib.blake2b(founding_node.encode(), digest_size=10).hexdigest()


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


@dataclass(slots=True)
class _Person:
    """Guardrail state of a growing person (held at its union-find root)."""

    size: int
    values: dict[str, set[str]]
    shared_lines: dict[str, set[str]]  # account -> line values on family/corporate accounts


@dataclass(frozen=True, slots=True)
class _Link:
    """A merge link as the union pass reads it (`since`: its first evidence, microseconds)."""

    i: int
    at: str
    av: str
    bt: str
    bv: str
    na: str
    nb: str
    tier: int
    since: int

    def other(self, node: str) -> str:
        return self.nb if node == self.na else self.na


def frequent_values(evidence: pl.DataFrame, cfg: IdentityCfg) -> dict[tuple[str, str], str]:
    """Values merge evidence puts on more distinct lines and accounts than
    `max_lines_per_value` allows for their type, with the reason: placeholders typed on many
    contracts, treated as junk (computed on whole regions, so both paths agree)."""
    limits = cfg.max_lines_per_value
    if not limits:
        return {}
    merge = evidence.filter(pl.col("kind") == "merge")
    sides = pl.concat(  # each value with its partner, from both ends of every link
        merge.select(
            pl.col(f"{me}_type").alias("t"),
            pl.col(f"{me}_value").alias("v"),
            pl.col(f"{other}_type").alias("pt"),
            pl.col(f"{other}_value").alias("pv"),
        )
        for me, other in (("a", "b"), ("b", "a"))
    )
    limit = pl.col("t").replace_strict(limits, default=None, return_dtype=pl.Int64)
    counts = (
        sides.filter(pl.col("t").is_in(list(limits)) & pl.col("pt").is_in(["msisdn", "account_id"]))
        .unique(["t", "v", "pt", "pv"])
        .group_by("t", "v")
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > limit)
    )
    return {
        (t, v): f"{t} {v!r} is on {n} lines and accounts; a value on more than {limits[t]} is "
        f"treated as junk (conf/identity.yaml max_lines_per_value.{t})"
        for t, v, n in counts.iter_rows()
    }


def _swap_windows(links: pl.DataFrame, cfg: IdentityCfg) -> dict[str, list[tuple[int, int]]]:
    """Per number (tenure node): the guard windows (start, end in microseconds) of its swaps."""
    guard = cfg.sim_swap_guard
    width = int(guard.window_hours * 3.6e9)
    out: dict[str, list[tuple[int, int]]] = {}
    rows = links.filter(pl.col("rule") == guard.swap_rule).select("a_node", "b_node", "time")
    for a, b, at in rows.iter_rows():
        node = a if a.startswith("msisdn:") else b
        out.setdefault(node, []).append((at, at + width))
    return out


@dataclass(frozen=True)
class Resolution:
    links: pa.Table
    nodes: pa.Table


def _micros(col: pa.ChunkedArray) -> list[int | None]:
    values: list[int | None] = pc.cast(col, pa.int64()).to_pylist()
    return values


ISO = "%Y-%m-%dT%H:%M:%S%.6fZ"  # a tenure in a node key: 2026-10-04T09:12:00.000000Z


def node_key_expr(t: str, v: str, start: str) -> pl.Expr:
    """`type:value`, or `type:value@tenure-start` (`@-` before any known opening)."""
    tenure = (
        pl.when(pl.col(start) == NO_TENURE)
        .then(pl.lit("-"))
        .otherwise(pl.col(start).cast(pl.Datetime("us", "UTC")).dt.strftime(ISO))
    )
    base = pl.concat_str([pl.col(t), pl.lit(":"), pl.col(v)])
    return (
        pl.when(pl.col(start).is_not_null())
        .then(pl.concat_str([base, pl.lit("@"), tenure]))
        .otherwise(base)
    )


def _tenure_start(
    frame: pl.DataFrame, opens: pl.DataFrame, t: str, v: str, out: str, recyclable: list[str]
) -> pl.DataFrame:
    """`out`: start of the tenure of (`t`, `v`) open at each row's event time (the latest opening
    not after it), NO_TENURE before the first opening, null for identifiers not recycled."""
    right = opens.rename({"t": t, "v": v, "start": out})
    joined = frame.sort("time").join_asof(
        right.sort(out),
        left_on="time",
        right_on=out,
        by=[t, v],
        strategy="backward",
        check_sortedness=False,
    )
    return joined.with_columns(
        pl.when(pl.col(t).is_in(recyclable) & pl.col(v).is_not_null())
        .then(pl.col(out).fill_null(NO_TENURE))
        .otherwise(None)
        .alias(out)
    )


def resolve(evidence: pa.Table, cfg: IdentityCfg) -> Resolution:
    """Links (with status and reason) and nodes (with person ids) of the regions in `evidence`,
    which must hold every evidence row of each region it touches (see the module docstring).

    Tenures, links and nodes are columnar (Polars as-of joins and group-bys); only the guardrail
    pass, a union-find over merge links in tier and event-time order, is a Python loop."""
    blocked = Blocklist(cfg)
    df = _ranked(evidence, blocked)
    opens, closes = _openings_and_closings(df)
    lk = _link_rows(df, opens, sorted(cfg.tenures))
    links = lk.group_by("edge_key", maintain_order=True).agg(
        pl.all().first(), pl.col("time").min().alias("link_from")
    )
    ends = _tenure_ends(links, opens, closes)
    links = _with_tenure_ends(links, ends)
    frequent = frequent_values(df, cfg)
    nodes = _nodes(lk, links, ends, blocked, frequent)
    nodes = nodes.join(_account_context(links), on="node", how="left").sort("rank")

    union = _UnionPass(cfg, blocked, frequent, nodes, links.height, _swap_windows(lk, cfg))
    union.run(links)
    # A household contact, like a blocked or junk value, is nobody's key: no person of its own.
    nodes = nodes.filter(~pl.col("node").is_in(sorted(union.contact_nodes)))
    persons = union.person_ids(nodes)
    return Resolution(_out_links(links, union, persons), _out_nodes(nodes, persons))


def _ranked(evidence: pa.Table, blocked: Blocklist) -> pl.DataFrame:
    """Evidence with its region, time in microseconds and rank (event-time order)."""
    df = pl.from_arrow(evidence)
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(
        pl.Series("region", regions_of(evidence, blocked), dtype=pl.String),
        pl.coalesce("valid_from", "valid_to").cast(pl.Int64).alias("time"),
        pl.col("ingest_ts").cast(pl.Int64).fill_null(0).alias("ingest"),
        pl.col("rule").fill_null("").alias("_rule"),
    )
    return (
        df.with_row_index("row")
        .sort(["time", "event_id", "_rule"], maintain_order=True)
        .with_row_index("rank")
    )


def _openings_and_closings(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(t, v, start) of every tenure opening and (t, v, end) of every closing."""
    life = df.filter(pl.col("kind").is_in(["opens", "closes"])).select(
        pl.col("kind"), pl.col("a_type").alias("t"), pl.col("a_value").alias("v"), "time"
    )
    opens = life.filter(pl.col("kind") == "opens").select("t", "v", pl.col("time").alias("start"))
    closes = life.filter(pl.col("kind") == "closes").select("t", "v", pl.col("time").alias("end"))
    return opens.unique(), closes.unique()


def _link_rows(df: pl.DataFrame, opens: pl.DataFrame, recyclable: list[str]) -> pl.DataFrame:
    """Merge and member evidence with each end's tenure, node and the link's edge key."""
    lk = df.filter(pl.col("kind").is_in(["merge", "member"]))
    lk = _tenure_start(lk, opens, "a_type", "a_value", "a_start", recyclable)
    lk = _tenure_start(lk, opens, "b_type", "b_value", "b_start", recyclable)
    lk = lk.with_columns(
        pl.when(pl.col("kind") == "merge").then(pl.col("b_start")).otherwise(None).alias("b_start")
    )
    return (
        lk.with_columns(
            node_key_expr("a_type", "a_value", "a_start").alias("a_node"),
            node_key_expr("b_type", "b_value", "b_start").alias("b_node"),
        )
        .with_columns(
            pl.concat_str(
                [pl.col("rule"), pl.lit("|"), pl.col("a_node"), pl.lit("|"), pl.col("b_node")]
            ).alias("edge_key")
        )
        .sort("rank")
    )


def _tenure_ends(links: pl.DataFrame, opens: pl.DataFrame, closes: pl.DataFrame) -> pl.DataFrame:
    """(t, v, start, end) of every tenure the links use.

    A tenure ends at the first closing at or after its start, or (1 µs before) the next opening
    if that comes first (a re-activation or change of holder without a deactivation still ends
    the old tenure, so a number never has two open tenures)."""
    triples = (
        pl.concat(
            [
                links.select(
                    pl.col("a_type").alias("t"),
                    pl.col("a_value").alias("v"),
                    pl.col("a_start").alias("start"),
                ),
                links.select(
                    pl.col("b_type").alias("t"),
                    pl.col("b_value").alias("v"),
                    pl.col("b_start").alias("start"),
                ),
            ]
        )
        .filter(pl.col("start").is_not_null())
        .unique()
    )
    return (
        triples.with_columns((pl.col("start") + 1).alias("after"))
        .sort("after")
        .join_asof(
            opens.rename({"start": "next"}).sort("next"),
            left_on="after",
            right_on="next",
            by=["t", "v"],
            strategy="forward",
            check_sortedness=False,
        )
        .sort("start")
        .join_asof(
            closes.sort("end"),
            left_on="start",
            right_on="end",
            by=["t", "v"],
            strategy="forward",
            check_sortedness=False,
        )
        # Ended by the next opening: valid until just before it, so an event at that instant
        # (the opening event itself) belongs to the new tenure alone.
        .with_columns(pl.min_horizontal("end", pl.col("next") - 1).alias("end"))
        .select("t", "v", "start", "end")
    )


def _with_tenure_ends(links: pl.DataFrame, ends: pl.DataFrame) -> pl.DataFrame:
    """Each link with both ends' tenure ends and `link_to`, the earlier of them."""
    links = (
        links.join(
            ends.rename({"t": "a_type", "v": "a_value", "start": "a_start", "end": "a_end"}),
            on=["a_type", "a_value", "a_start"],
            how="left",
            nulls_equal=False,
        )
        .join(
            ends.rename({"t": "b_type", "v": "b_value", "start": "b_start", "end": "b_end"}),
            on=["b_type", "b_value", "b_start"],
            how="left",
            nulls_equal=False,
        )
        .sort("rank")
    )
    return links.with_columns(pl.min_horizontal("a_end", "b_end").alias("link_to"))


def _nodes(
    lk: pl.DataFrame,
    links: pl.DataFrame,
    ends: pl.DataFrame,
    blocked: Blocklist,
    frequent: dict[tuple[str, str], str],
) -> pl.DataFrame:
    """Nodes: the first evidence (rank order) mentioning each node that is neither blocked nor
    a frequent (junk) value, with its first link time and tenure end."""
    mentioned = ["rank", "ingest", "region", "time"]
    mentions = pl.concat(
        [
            lk.select(
                pl.col("a_node").alias("node"),
                pl.col("a_type").alias("t"),
                pl.col("a_value").alias("v"),
                pl.col("a_start").alias("start"),
                *mentioned,
            ),
            lk.filter(pl.col("kind") == "merge").select(
                pl.col("b_node").alias("node"),
                pl.col("b_type").alias("t"),
                pl.col("b_value").alias("v"),
                pl.col("b_start").alias("start"),
                *mentioned,
            ),
        ]
    )
    values = mentions.select("t", "v").unique()
    bad = [blocked.reason(t, v) is not None or (t, v) in frequent for t, v in values.iter_rows()]
    blocked_values = values.filter(pl.Series(bad, dtype=pl.Boolean))
    mentions = mentions.join(blocked_values, on=["t", "v"], how="anti")
    first_link = (
        pl.concat(
            [
                links.select(pl.col("a_node").alias("node"), pl.col("link_from")),
                links.select(pl.col("b_node").alias("node"), pl.col("link_from")),
            ]
        )
        .group_by("node")
        .agg(pl.col("link_from").min())
    )
    return (
        mentions.sort("rank")
        .group_by("node", maintain_order=True)
        .agg(pl.all().first())
        .join(first_link, on="node", how="left")
        .join(ends, on=["t", "v", "start"], how="left", nulls_equal=False)
        .sort("rank")
    )


def _account_context(links: pl.DataFrame) -> pl.DataFrame:
    """Account context: the first link (rank order) that states a node's account."""
    acct = links.filter((pl.col("kind") == "member") | (pl.col("b_type") == "account_id"))
    return (
        pl.concat(
            [
                acct.select(
                    pl.col("a_node").alias("node"),
                    pl.col("b_value").alias("account_id"),
                    "account_type",
                    "role",
                    "rank",
                    pl.lit(0).alias("side"),
                ),
                acct.filter(pl.col("kind") == "merge").select(
                    pl.col("b_node").alias("node"),
                    pl.col("b_value").alias("account_id"),
                    "account_type",
                    pl.lit("holder").alias("role"),
                    "rank",
                    pl.lit(1).alias("side"),
                ),
            ]
        )
        .sort(["rank", "side"])
        .group_by("node", maintain_order=True)
        .agg(pl.col("account_id", "account_type", "role").first())
    )


class _UnionPass:
    """Guardrails and union-find over the merge links, strongest tier first, then event-time
    order; contacts value by value; SIM-swap-guarded links last. Fills each link's status,
    reason code and reason."""

    def __init__(
        self,
        cfg: IdentityCfg,
        blocked: Blocklist,
        frequent: dict[tuple[str, str], str],
        nodes: pl.DataFrame,
        n_links: int,
        swaps: dict[str, list[tuple[int, int]]],
    ) -> None:
        self.cfg, self.guard, self.blocked, self.frequent = cfg, cfg.guardrails, blocked, frequent
        self.swaps = swaps
        self.contacts = set(cfg.contacts)
        self.people: dict[str, _Person] = {}
        for nk, t, v, account, account_type in nodes.select(
            "node", "t", "v", "account_id", "account_type"
        ).iter_rows():
            shared: dict[str, set[str]] = {}
            if t == "msisdn" and account and account_type in self.guard.one_line_per_person_on:
                shared[account] = {v}
            self.people[nk] = _Person(1, {t: {v}}, shared)
        self.uf = _Find()
        self.status: list[str] = ["member"] * n_links
        self.code: list[str | None] = [None] * n_links
        self.reason: list[str | None] = [None] * n_links
        self.waiting: list[tuple[_Link, str]] = []
        self.contact_nodes: set[str] = set()

    def run(self, links: pl.DataFrame) -> None:
        merges = (
            links.with_row_index("i")
            .filter(pl.col("kind") == "merge")
            .sort(["tier", "rank", "edge_key"])
        )
        by_contact: dict[str, list[_Link]] = {}
        for i, at, av, bt, bv, na, nb, tier, since in merges.select(
            "i", "a_type", "a_value", "b_type", "b_value", "a_node", "b_node", "tier", "link_from"
        ).iter_rows():
            row = _Link(i, at, av, bt, bv, na, nb, tier, since)
            junk_why = self.junk(at, av) or self.junk(bt, bv)
            if junk_why:
                self.status[i] = "refused"
                self.code[i], self.reason[i] = junk_why
            elif at in self.contacts or bt in self.contacts:
                by_contact.setdefault(na if at in self.contacts else nb, []).append(row)
            else:
                self.merge_unless_guarded(row)
        for node, rows in by_contact.items():
            self.contact(node, rows)
        # SIM-swap guard last: a waiting link stands only where other links already joined
        # its ends.
        for row, why in self.waiting:
            if self.uf.find(row.na) == self.uf.find(row.nb):
                self.status[row.i] = "accepted"
            else:
                self.status[row.i], self.code[row.i] = "refused", "sim_swap_guard"
                self.reason[row.i] = why

    def junk(self, t: str, v: str) -> tuple[str, str] | None:
        why = self.blocked.reason(t, v)
        if why:
            return "blocked", why
        return ("junk_frequent", self.frequent[(t, v)]) if (t, v) in self.frequent else None

    def refusal(self, pa_: _Person, pb: _Person) -> tuple[str, str] | None:
        guard = self.guard
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
        for acct_id in pa_.shared_lines.keys() & pb.shared_lines.keys():
            lines = ", ".join(sorted(pa_.shared_lines[acct_id] | pb.shared_lines[acct_id])[:4])
            return (
                "shared_account",
                f"would merge the users of different lines ({lines}) of account {acct_id}, "
                "whose lines belong to different people (guardrails.one_line_per_person_on)",
            )
        return None

    def merge_unless_guarded(self, row: _Link) -> None:
        if why := self.guarded(row):
            self.waiting.append((row, why))
        else:
            self.try_merge(row.i, row.na, row.nb)

    def try_merge(self, i: int, na: str, nb: str) -> None:
        """Accept link `i` and join its persons, unless that breaks a guardrail."""
        uf, people = self.uf, self.people
        ra, rb = uf.find(na), uf.find(nb)
        self.status[i] = "accepted"
        if ra == rb:
            return
        refused = self.refusal(people[ra], people[rb])
        if refused:
            self.status[i] = "refused"
            self.code[i], self.reason[i] = refused
            return
        uf.union(ra, rb)
        root, other = (ra, rb) if uf.find(ra) == ra else (rb, ra)
        keep, gone = people[root], people.pop(other)
        keep.size += gone.size
        for t, vs in gone.values.items():
            keep.values.setdefault(t, set()).update(vs)
        for acct_id, lines in gone.shared_lines.items():
            keep.shared_lines.setdefault(acct_id, set()).update(lines)

    def guarded(self, row: _Link) -> str | None:
        """Why a link waits for corroboration: a new guarded identifier on a number soon
        after its SIM swap (None: it does not)."""
        guard = self.cfg.sim_swap_guard
        for node, other_type in ((row.nb, row.at), (row.na, row.bt)):
            if other_type not in guard.guarded:
                continue
            for at_, until in self.swaps.get(node, ()):
                if at_ <= row.since <= until:
                    hours = (row.since - at_) / 3.6e9
                    return (
                        f"{other_type} first seen on {node.split('@')[0]} {hours:.1f} h after its "
                        f"SIM swap: not merged without a second, independent link "
                        f"(identity.yaml sim_swap_guard.window_hours {guard.window_hours:g})"
                    )
        return None

    def established(self, root: str) -> bool:
        """A person of their own: holds a line, an account or a passport (not a bare app
        user or email, which a contact may still join)."""
        held = self.people[root].values
        return any(held.get(t) for t in ("msisdn", "account_id", "passport"))

    def contact(self, node: str, rows: list[_Link]) -> None:
        """A contact value, strongest evidence first: one person -> merged into it; several
        persons at the strongest tier -> a contact of each; weaker evidence from another person
        than the owner -> refused (someone else's contact)."""
        uf = self.uf
        owned = False
        for tier in sorted({r.tier for r in rows}):
            group = [r for r in rows if r.tier == tier]
            others = {root for r in group if self.established(root := uf.find(r.other(node)))}
            if not owned and len(others) > 1:
                self.shared_contact(node, rows, tier, len(others))
                return
            for r in group:
                theirs = uf.find(r.other(node))
                if owned and theirs != uf.find(node) and self.established(theirs):
                    self.status[r.i], self.code[r.i] = "refused", "shared_contact"
                    self.reason[r.i] = (
                        f"{node} belongs to another person by stronger evidence: not merged "
                        "(identity.yaml contacts)"
                    )
                else:
                    self.merge_unless_guarded(r)
            owned = owned or any(self.status[r.i] == "accepted" for r in group)

    def shared_contact(self, node: str, rows: list[_Link], tier: int, persons: int) -> None:
        """A household contact: each link from `tier` on makes it a contact, never a merge."""
        shown = node.split(":", 1)[1]
        for r in rows:
            if r.tier >= tier:
                self.status[r.i], self.code[r.i] = "contact", "shared_contact"
                self.reason[r.i] = (
                    f"{node.split(':')[0]} {shown!r} is used by {persons} persons "
                    "(a household contact): a contact of each, never merging them "
                    "(identity.yaml contacts)"
                )
        self.contact_nodes.add(node)

    def person_ids(self, nodes: pl.DataFrame) -> pl.DataFrame:
        """(node, person_id): each person is named after its founding node, the first in rank
        order, so ids stay stable as the person grows."""
        node_keys = nodes.get_column("node").to_list()
        ranks = nodes.get_column("rank").to_list()
        founder: dict[str, tuple[int, str]] = {}
        roots = [self.uf.find(nk) for nk in node_keys]
        for nk, r, root in zip(node_keys, ranks, roots, strict=True):
            known = founder.get(root)
            if known is None or (r, nk) < known:
                founder[root] = (r, nk)
        pid_of_root = {root: person_id_of(f[1]) for root, f in founder.items()}
        return pl.DataFrame(
            {"node": node_keys, "person_id": [pid_of_root[r] for r in roots]},
            schema={"node": pl.String, "person_id": pl.String},
        )


def _tenure_ts(c: str) -> pl.Expr:
    return pl.when(pl.col(c) == NO_TENURE).then(None).otherwise(pl.col(c)).cast(UTC_MICROS)


def _out_links(links: pl.DataFrame, union: _UnionPass, persons: pl.DataFrame) -> pa.Table:
    out = (
        links.with_columns(
            pl.Series("status", union.status, dtype=pl.String),
            pl.Series("reason_code", union.code, dtype=pl.String),
            pl.Series("reason", union.reason, dtype=pl.String),
        )
        .join(persons.rename({"node": "a_node"}), on="a_node", how="left")
        .join(
            persons.rename({"node": "b_node", "person_id": "b_person_id"}), on="b_node", how="left"
        )
        .with_columns(
            pl.when(pl.col("kind") == "merge")
            .then(pl.col("b_person_id"))
            .otherwise(None)
            .alias("b_person_id"),
            _tenure_ts("a_start").alias("a_tenure"),
            _tenure_ts("b_start").alias("b_tenure"),
            pl.col("ingest").cast(UTC_MICROS).alias("first_ingest_ts"),
            pl.col("link_from").cast(UTC_MICROS).alias("valid_from"),
            pl.col("link_to").cast(UTC_MICROS).alias("valid_to"),
        )
        .select(LINKS_SCHEMA.names)
    )
    return out.to_arrow().cast(LINKS_SCHEMA)


def _out_nodes(nodes: pl.DataFrame, persons: pl.DataFrame) -> pa.Table:
    out = (
        nodes.join(persons, on="node", how="left")
        .with_columns(
            pl.col("node").alias("node_key"),
            pl.col("t").alias("id_type"),
            pl.col("v").alias("id_value"),
            _tenure_ts("start").alias("tenure"),
            pl.when(pl.col("start").is_not_null() & (pl.col("start") != NO_TENURE))
            .then(pl.col("start"))
            .otherwise(pl.col("link_from"))
            .cast(UTC_MICROS)
            .alias("valid_from"),
            pl.col("end").cast(UTC_MICROS).alias("valid_to"),
            pl.col("ingest").cast(UTC_MICROS).alias("first_seen"),
        )
        .select(NODES_SCHEMA.names)
    )
    return out.to_arrow().cast(NODES_SCHEMA)
