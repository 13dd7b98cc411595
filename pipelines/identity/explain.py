"""Why an identifier belongs to its person: the chain of accepted links from the person's founding
identifier to it (rule, source event, time), and the links that were refused, with reasons.

`explain` reads `gold.identity_map` and `gold.identity_links` only, so the CLI and the API give
the same answer; `render` turns it into the text `cdp identity explain` prints.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
import pyarrow.compute as pc

from pipelines.config import IdentityCfg
from pipelines.lakehouse.catalog import LINKS, MAP
from pipelines.lakehouse.reader import LakeReader


@dataclass(frozen=True)
class Hop:
    """One accepted link on the way from the founding identifier."""

    from_node: str
    to_node: str
    rule: str
    event_id: str
    source: str
    event_type: str
    at: datetime | None


@dataclass(frozen=True)
class Identifier:
    node: str
    id_type: str
    value: str
    tenure: datetime | None
    valid_from: datetime | None
    valid_to: datetime | None
    account_id: str | None
    account_type: str | None
    role: str | None
    chain: list[Hop]


@dataclass(frozen=True)
class Refusal:
    rule: str
    a_node: str
    b_node: str
    event_id: str
    at: datetime | None
    reason_code: str
    reason: str


@dataclass
class PersonExplanation:
    person_id: str
    founding_node: str
    matched: list[str]
    identifiers: list[Identifier] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)


def normalise_value(id_type: str, value: str, cfg: IdentityCfg) -> str:
    """The spelling identity stores: E.164 digits for MSISDNs, lower-case emails, passports
    without spaces in upper case (the same rules silver and the evidence apply)."""
    v = value.strip()
    if id_type == "msisdn":
        c = cfg.country
        digits = "".join(ch for ch in v if ch not in " -().+")
        n = c.national_number_length
        if len(digits) == n:
            return c.calling_code + digits
        if len(digits) == n + 1 and digits.startswith("0"):
            return c.calling_code + digits[1:]
        return digits[2:] if digits.startswith("00") else digits
    if id_type == "email":
        return v.lower()
    if id_type == "passport":
        return "".join(v.split()).upper()
    return v


def example_msisdn(lake: LakeReader) -> str | None:
    """A number worth explaining: one held by most persons (recycled), else the first line."""
    if not lake.exists(MAP):
        return None
    lines = lake.read_arrow(MAP, ["id_value", "person_id"], pl.col("id_type") == "msisdn")
    if not lines.num_rows:
        return None
    owners = lines.group_by("id_value").aggregate([("person_id", "count_distinct")])
    owners = owners.sort_by([("person_id_count_distinct", "descending"), ("id_value", "ascending")])
    value: str = owners.column("id_value")[0].as_py()
    return value


def explain(
    lake: LakeReader, cfg: IdentityCfg, id_type: str, value: str
) -> list[PersonExplanation]:
    """One explanation per person holding the identifier (a recycled number: one per tenure)."""
    if not lake.exists(MAP):
        return []
    value = normalise_value(id_type, value, cfg)
    found = lake.read_arrow(
        MAP, where=(pl.col("id_type") == id_type) & (pl.col("id_value") == value)
    )
    out: list[PersonExplanation] = []
    for pid in dict.fromkeys(found.column("person_id").to_pylist()):
        matched = found.filter(pc.equal(found.column("person_id"), pid))
        out.append(_person(lake, pid, matched.column("node_key").to_pylist()))
    return out


def _person(lake: LakeReader, person_id: str, matched: list[str]) -> PersonExplanation:
    nodes = lake.read_arrow(MAP, where=pl.col("person_id") == person_id).sort_by(
        [("first_seen", "ascending"), ("node_key", "ascending")]
    )
    keys = nodes.column("node_key")
    members = pl.Series(keys.to_pylist(), dtype=pl.String).implode()
    links = lake.read_arrow(
        LINKS,
        where=pl.col("a_node").is_in(members) | pl.col("b_node").is_in(members),
    )
    accepted = links.filter(pc.equal(links.column("status"), "accepted")).sort_by(
        [("first_ingest_ts", "ascending"), ("edge_key", "ascending")]
    )
    graph: dict[str, list[Hop]] = {}
    for r in accepted.to_pylist():
        for x, y in ((r["a_node"], r["b_node"]), (r["b_node"], r["a_node"])):
            hop = Hop(x, y, r["rule"], r["event_id"], r["source"], r["event_type"], r["valid_from"])
            graph.setdefault(x, []).append(hop)
    founder = keys[0].as_py()
    chains: dict[str, list[Hop]] = {founder: []}
    queue = deque([founder])
    while queue:
        x = queue.popleft()
        for hop in graph.get(x, []):
            if hop.to_node not in chains:
                chains[hop.to_node] = [*chains[x], hop]
                queue.append(hop.to_node)
    explanation = PersonExplanation(person_id, founder, matched)
    for r in nodes.to_pylist():
        explanation.identifiers.append(
            Identifier(
                r["node_key"],
                r["id_type"],
                r["id_value"],
                r["tenure"],
                r["valid_from"],
                r["valid_to"],
                r["account_id"],
                r["account_type"],
                r["role"],
                chains.get(r["node_key"], []),
            )
        )
    for r in links.filter(pc.equal(links.column("status"), "refused")).to_pylist():
        explanation.refused.append(
            Refusal(
                r["rule"],
                r["a_node"],
                r["b_node"],
                r["event_id"],
                r["valid_from"],
                r["reason_code"],
                r["reason"],
            )
        )
    return explanation


def _t(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "open"


def render(explanations: list[PersonExplanation], id_type: str, value: str) -> str:
    """The text `cdp identity explain` prints."""
    if not explanations:
        return f"{id_type} {value!r}: no person holds this identifier (never seen, or blocked)"
    lines: list[str] = []
    for e in explanations:
        lines.append(f"person {e.person_id}  (founded by {e.founding_node})")
        lines.append(f"  matched: {', '.join(e.matched)}")
        for ident in e.identifiers:
            account = (
                f"  account {ident.account_id} ({ident.account_type}, {ident.role})"
                if ident.account_id
                else ""
            )
            lines.append(
                f"  {ident.id_type:<11} {ident.value:<28} valid {_t(ident.valid_from)} -> "
                f"{_t(ident.valid_to)}{account}"
            )
            for hop in ident.chain:
                lines.append(
                    f"      <- {hop.from_node}  by {hop.rule} ({hop.source} {hop.event_type} "
                    f"{hop.event_id}, {_t(hop.at)})"
                )
        if e.refused:
            lines.append("  refused links:")
            for r in e.refused:
                lines.append(
                    f"    {r.a_node} -- {r.b_node}  by {r.rule} ({r.event_id}, {_t(r.at)}): "
                    f"{r.reason}"
                )
    return "\n".join(lines)
