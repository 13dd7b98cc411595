"""What a resolution writes besides links and nodes: the identity tables' names, the change rows
(merges, splits, SIM-swap suspicions, contact changes) and the account rows.

Pure Arrow and shared by both paths: the incremental path (driver, a few regions) calls the
functions taking a `Resolution`; the full recompute finds the few changed rows on Spark and
hands them to the same row builders (`merge_rows`, `suspicious_rows`, `contact_rows`), and
applies `account_view` per partition of whole accounts, so both give the same rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.identity.resolve import Resolution
from pipelines.lakehouse.catalog import EVIDENCE, LINKS

# The evidence version the links (and so every identity table) reflect.
RESOLVED = f"{LINKS}<-{EVIDENCE}"
# Map column: the evidence version at which the row last changed (what moved since version v).
CHANGED_AT = "evidence_version"
SUSPICIOUS = "suspicious_link"  # a change row: a link the SIM-swap guard held back
CONTACT = "contact"  # a change row: a person gained or lost a household contact
# The link columns a merge row cites, and the previous persons of the link's two nodes.
JOINING_COLUMNS = ["a_node", "b_node", "rule", "event_id", "edge_key", "valid_from"]

MERGES_SCHEMA = pa.schema(
    [
        ("change", pa.string()),
        ("from_person_id", pa.string()),
        ("to_person_id", pa.string()),
        ("identifiers_moved", pa.int64()),
        ("link_rule", pa.string()),
        ("link_event_id", pa.string()),
        ("link_edge_key", pa.string()),
        ("link_event_ts", pa.timestamp("us", tz="UTC")),
        ("at", pa.timestamp("us", tz="UTC")),
        ("evidence_version", pa.int64()),
    ]
)
ACCOUNTS_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("account_type", pa.string()),
        ("holder_person_id", pa.string()),
        ("member_person_ids", pa.list_(pa.string())),
        ("lines", pa.list_(pa.string())),
        ("open_lines", pa.list_(pa.string())),
    ]
)


@dataclass
class IdentityResult:
    """What one identity refresh did."""

    mode: str = "none"  # none | incremental | full
    evidence_rows: int = 0
    regions: int = 0
    identifiers: int = 0
    persons: int = 0
    merges: int = 0
    splits: int = 0
    refused: int = 0
    seconds: float = 0.0
    rounds: int = 0  # connected-components rounds (full recompute)
    refused_by_reason: dict[str, int] = field(default_factory=dict)


def summary(
    mode: str,
    changes: pa.Table,
    *,
    evidence_rows: int,
    regions: int,
    identifiers: int,
    persons: int,
    refused_by_reason: dict[str, int],
) -> IdentityResult:
    """What a refresh did, from its change rows and the resolution's counts (both paths)."""
    kinds = changes.column("change")
    return IdentityResult(
        mode=mode,
        evidence_rows=evidence_rows,
        regions=regions,
        identifiers=identifiers,
        persons=persons,
        merges=pc.sum(pc.equal(kinds, "merge")).as_py() or 0,
        splits=pc.sum(pc.equal(kinds, "split")).as_py() or 0,
        refused=sum(refused_by_reason.values()),
        refused_by_reason=refused_by_reason,
    )


# ---------------------------------------------------------------- merges and splits


def person_changes(old_map: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Merges and splits between the previous person of each identifier and the new one.

    A previous person whose identifiers now all sit in one other person was merged into it
    (with the accepted link that joined them); a previous person whose identifiers now sit in
    several persons was split, and each other side is recorded.
    """
    old = old_map.select(["node_key", "person_id"]).rename_columns(["node_key", "old"])
    new = resolution.nodes.select(["node_key", "person_id"]).rename_columns(["node_key", "new"])
    pairs = (
        old.join(new, "node_key", join_type="inner")
        .group_by(["old", "new"])
        .aggregate([([], "count_all")])
    )
    targets = pairs.group_by("old").aggregate([([], "count_all")]).rename_columns(["old", "n"])
    pairs = pairs.join(targets, "old")
    moved = pairs.filter(
        pc.or_(pc.not_equal(pairs.column("old"), pairs.column("new")), pc.greater(pairs["n"], 1))
    ).to_pylist()
    if not moved:
        return MERGES_SCHEMA.empty_table()
    changed = pa.array(sorted({r["old"] for r in moved}), pa.string())
    return merge_rows(moved, _joining_candidates(old_map, resolution.links, changed), version)


def _joining_candidates(old_map: pa.Table, links: pa.Table, changed: pa.Array) -> pa.Table:
    """Accepted links between nodes of two different previous persons, one of them in
    `changed`, with those persons (`a_old`, `b_old`)."""
    old = old_map.select(["node_key", "person_id"])
    accepted = links.filter(pc.equal(links.column("status"), "accepted")).select(JOINING_COLUMNS)
    sides = accepted.join(
        old.rename_columns(["a_node", "a_old"]), "a_node", join_type="inner"
    ).join(old.rename_columns(["b_node", "b_old"]), "b_node", join_type="inner")
    a_old, b_old = sides.column("a_old"), sides.column("b_old")
    return sides.filter(
        pc.and_(
            pc.not_equal(a_old, b_old),
            pc.or_(pc.is_in(a_old, changed), pc.is_in(b_old, changed)),
        )
    )


def merge_rows(moved: list[dict[str, Any]], candidates: pa.Table, version: int) -> pa.Table:
    """Change rows from the (old, new, count_all) pairs whose persons moved; `candidates` are the
    accepted links joining two previous persons (`_joining_candidates`): the first by event time
    is the one a merge row cites."""
    now = datetime.now(UTC)
    by_old: dict[str, dict[str, int]] = defaultdict(dict)
    for r in moved:
        by_old[r["old"]][r["new"]] = r["count_all"]
    joining: dict[tuple[str, str], dict[str, Any]] = {}
    ordered = candidates.sort_by([("valid_from", "ascending"), ("edge_key", "ascending")])
    for row in ordered.to_pylist():
        joining.setdefault((row["a_old"], row["b_old"]), row)
        joining.setdefault((row["b_old"], row["a_old"]), row)
    rows: list[dict[str, object]] = []
    for p, targets_of_p in sorted(by_old.items()):
        if len(targets_of_p) == 1 and p not in targets_of_p:
            ((q, n),) = targets_of_p.items()
            link = joining.get((p, q)) or next((r for (x, _), r in joining.items() if x == p), {})
            rows.append(_change("merge", p, q, n, link, now, version))
        elif len(targets_of_p) > 1:
            for q, n in sorted(targets_of_p.items()):
                if q != p:
                    rows.append(_change("split", p, q, n, {}, now, version))
    return pa.Table.from_pylist(rows, MERGES_SCHEMA)


# ---------------------------------------------------------------- contacts and SIM-swap suspicions


def contact_changes(old_links: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Change rows for persons whose household contacts (links with status `contact`) changed,
    so gold rebuilds their profiles (no event: a contact is not an identity change)."""

    def held(links: pa.Table) -> set[tuple[str, str]]:
        rows = links.filter(pc.equal(links.column("status"), "contact"))
        return {(r["edge_key"], str(contact_person(r))) for r in rows.to_pylist()}

    new, old = held(resolution.links), held(old_links) if old_links.num_rows else set()
    return contact_rows({p for _, p in new ^ old if p != "None"}, version)


def contact_rows(persons: set[str], version: int) -> pa.Table:
    """One `contact` change row per person whose household contacts changed."""
    now = datetime.now(UTC)
    return pa.Table.from_pylist(
        [_change(CONTACT, p, p, 0, {}, now, version) for p in sorted(persons)], MERGES_SCHEMA
    )


def contact_person(link: dict[str, object]) -> object:
    """The person a contact link's contact belongs to: the side that is not the contact."""
    return link["person_id"] if link["b_type"] == "email" else link["b_person_id"]


def suspicious_links(old_links: pa.Table, resolution: Resolution, version: int) -> pa.Table:
    """Change rows for links the SIM-swap guard refused that were not refused so before: the
    new identifier's person (`from`) and the number's holder (`to`), for the fraud team."""
    links = resolution.links
    held = links.filter(pc.equal(links.column("reason_code"), "sim_swap_guard"))
    if held.num_rows and old_links.num_rows:
        before = old_links.filter(pc.equal(old_links.column("reason_code"), "sim_swap_guard"))
        held = held.filter(pc.invert(pc.is_in(held.column("edge_key"), before.column("edge_key"))))
    return suspicious_rows(held, version)


def suspicious_rows(held: pa.Table, version: int) -> pa.Table:
    """One change row per newly held link (`suspicious_links`)."""
    now = datetime.now(UTC)
    rows = []
    for r in held.to_pylist():
        # The number is the side whose node carries a tenure: its holder is the one at risk.
        number_on_b = r["b_type"] == "msisdn"
        stranger, holder = (
            (r["person_id"], r["b_person_id"])
            if number_on_b
            else (r["b_person_id"], r["person_id"])
        )
        rows.append(_change(SUSPICIOUS, stranger, holder, 1, r, now, version))
    return pa.Table.from_pylist(rows, MERGES_SCHEMA)


def _change(
    kind: str, p: str, q: str, n: int, link: dict[str, Any], now: datetime, version: int
) -> dict[str, object]:
    return {
        "change": kind,
        "from_person_id": p,
        "to_person_id": q,
        "identifiers_moved": n,
        "link_rule": link.get("rule"),
        "link_event_id": link.get("event_id"),
        "link_edge_key": link.get("edge_key"),
        "link_event_ts": link.get("valid_from"),
        "at": now,
        "evidence_version": version,
    }


# ---------------------------------------------------------------- accounts

# The link columns `account_view` reads.
ACCOUNT_LINK_COLUMNS = [
    "b_value",
    "account_type",
    "role",
    "a_node",
    "a_value",
    "valid_to",
    "status",
]


@dataclass
class _Account:
    account_types: set[str] = field(default_factory=set)
    holders: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    lines: set[str] = field(default_factory=set)
    open_lines: set[str] = field(default_factory=set)


def account_view(links: pa.Table, nodes: pa.Table) -> pa.Table:
    """One row per account from its line links: type, holder person, member persons, lines.
    Independent of row order (the full recompute calls it per partition of whole accounts): an
    account with two holders or two types (bad source data) shows the smallest."""
    person = dict(
        zip(
            nodes.column("node_key").to_pylist(),
            nodes.column("person_id").to_pylist(),
            strict=True,
        )
    )
    acc_links = links.filter(pc.equal(links.column("b_type"), "account_id"))
    accounts: dict[str, _Account] = defaultdict(_Account)
    for row in acc_links.select(ACCOUNT_LINK_COLUMNS).to_pylist():
        if row["status"] == "refused":
            continue
        acc = accounts[row["b_value"]]
        if row["account_type"] is not None:
            acc.account_types.add(row["account_type"])
        pid = person.get(row["a_node"])
        if pid:
            acc.members.add(pid)
            if row["role"] == "holder":
                acc.holders.add(pid)
        acc.lines.add(row["a_value"])
        if row["valid_to"] is None:
            acc.open_lines.add(row["a_value"])
    rows = [
        {
            "account_id": a,
            "account_type": min(v.account_types, default=None),
            "holder_person_id": min(v.holders, default=None),
            "member_person_ids": sorted(v.members),
            "lines": sorted(v.lines),
            "open_lines": sorted(v.open_lines),
        }
        for a, v in sorted(accounts.items())
    ]
    return pa.Table.from_pylist(rows, ACCOUNTS_SCHEMA)
