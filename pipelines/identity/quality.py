"""Identity quality against the generator's ground truth (tests and benchmarks only; the pipeline
never reads truth).

Scored on the identifiers the pipeline has seen in some event: pairwise precision and recall of
"these two identifiers belong to one person", B-cubed precision and recall, family and corporate
accounts whose lines' users were collapsed into one person, and recycled numbers whose second
owner was not kept apart from the first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Quality:
    identifiers: int
    unresolved: int
    pairwise_precision: float
    pairwise_recall: float
    bcubed_precision: float
    bcubed_recall: float
    shared_accounts: int
    collapsed_accounts: int
    recycled_numbers: int
    recycled_merged: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _key(id_type: str, value: str, tenure: datetime | None) -> str:
    # Event times carry milliseconds; the truth keeps microseconds.
    at = tenure.replace(microsecond=tenure.microsecond // 1000 * 1000) if tenure else None
    return f"{id_type}:{value}@{at.isoformat() if at else ''}"


def truth_identifiers(truth_root: Path) -> dict[str, str]:
    """Every identifier instance of the generated operator -> the person it belongs to."""
    truth: dict[str, str] = {}
    for p in pq.read_table(truth_root / "persons.parquet").to_pylist():
        # A household or shop email (`contact_email`) is nobody's key, so it is not listed.
        for t in ("passport", "email", "app_user_id"):
            if p[t]:
                truth[_key(t, p[t], None)] = p["person_key"]
    for a in pq.read_table(truth_root / "accounts.parquet").to_pylist():
        if a["account_type"] == "individual" and a["holder_person_key"]:
            truth[_key("account_id", a["account_id"], None)] = a["holder_person_key"]
    for t in pq.read_table(truth_root / "tenures.parquet").to_pylist():
        truth[_key("msisdn", t["msisdn"], t["valid_from"])] = t["person_key"]
    for i in pq.read_table(truth_root / "iccids.parquet").to_pylist():
        truth[_key("iccid", i["iccid"], i["valid_from"])] = i["person_key"]
    return truth


def _pairs(sizes: Counter[Any]) -> int:
    return sum(n * (n - 1) // 2 for n in sizes.values())


def assignment(identity_map: pa.Table) -> dict[str, str]:
    """`gold.identity_map` as identifier instance -> person id, keyed like the truth."""
    rows = identity_map.select(["id_type", "id_value", "tenure", "person_id"]).to_pylist()
    return {_key(r["id_type"], r["id_value"], r["tenure"]): r["person_id"] for r in rows}


def value_of(key: str) -> str:
    """`type:value` of an identifier instance key (its tenure dropped)."""
    return key.split("@")[0]


def seen_values(evidence: pa.Table) -> set[str]:
    """`type:value` of every identifier some evidence row mentions."""
    seen: set[str] = set()
    for t, v in (("a_type", "a_value"), ("b_type", "b_value")):
        types, values = evidence.column(t).to_pylist(), evidence.column(v).to_pylist()
        seen.update(f"{a}:{b}" for a, b in zip(types, values, strict=True) if b is not None)
    return seen


@dataclass(frozen=True)
class SituationQuality:
    """Pairwise precision and recall over the pairs that involve an identifier of the persons
    the generator put in one situation (a household email, a SIM-swap takeover...)."""

    situation: str
    persons: int
    identifiers: int
    precision: float
    recall: float


def _pairs_touching(sizes: Counter[Any], inside: Counter[Any]) -> int:
    """Pairs within each group that have at least one member counted in `inside`."""
    return sum(
        n * (n - 1) // 2 - (n - inside[g]) * (n - inside[g] - 1) // 2 for g, n in sizes.items()
    )


def by_situation(
    predicted: Mapping[str, str], truth_root: Path, seen_values: set[str]
) -> list[SituationQuality]:
    """`SituationQuality` for every situation tagged in the truth's persons."""
    truth = {k: p for k, p in truth_identifiers(truth_root).items() if value_of(k) in seen_values}
    assigned = {k: predicted.get(k, f"unresolved:{k}") for k in truth}
    tagged: dict[str, set[str]] = defaultdict(set)
    for p in pq.read_table(truth_root / "persons.parquet").to_pylist():
        for situation in p.get("situations") or []:
            tagged[situation].add(p["person_key"])
    out = []
    for situation, persons in sorted(tagged.items()):
        keys = [k for k in truth if truth[k] in persons]
        mine = set(keys)
        both = Counter((truth[k], assigned[k]) for k in truth)
        both_in = Counter((truth[k], assigned[k]) for k in mine)
        pred = Counter(assigned.values())
        pred_in = Counter(assigned[k] for k in mine)
        true = Counter(truth.values())
        true_in = Counter(truth[k] for k in mine)
        tp = _pairs_touching(both, both_in)
        pp, tt = _pairs_touching(pred, pred_in), _pairs_touching(true, true_in)
        out.append(
            SituationQuality(
                situation,
                len(persons),
                len(keys),
                tp / pp if pp else 1.0,
                tp / tt if tt else 1.0,
            )
        )
    return out


def evaluate(predicted: Mapping[str, str], truth_root: Path, seen_values: set[str]) -> Quality:
    """Score an assignment (see `assignment`) against truth, over truth identifiers whose value
    the pipeline has seen."""
    truth = {k: p for k, p in truth_identifiers(truth_root).items() if value_of(k) in seen_values}
    # An identifier the pipeline did not resolve is a person of its own.
    assigned = {k: predicted.get(k, f"unresolved:{k}") for k in truth}
    both = Counter((truth[k], assigned[k]) for k in truth)
    tp = _pairs(both)
    pred_pairs = _pairs(Counter(assigned.values()))
    true_pairs = _pairs(Counter(truth.values()))
    by_pred: Counter[str] = Counter(assigned.values())
    by_true: Counter[str] = Counter(truth.values())
    b3p = sum(both[(truth[k], assigned[k])] / by_pred[assigned[k]] for k in truth) / len(truth)
    b3r = sum(both[(truth[k], assigned[k])] / by_true[truth[k]] for k in truth) / len(truth)

    tenures = pq.read_table(truth_root / "tenures.parquet").to_pylist()
    types = {
        a["account_id"]: a["account_type"]
        for a in pq.read_table(truth_root / "accounts.parquet").to_pylist()
    }
    lines: dict[str, list[tuple[str, str]]] = defaultdict(list)
    owners: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for t in tenures:
        k = _key("msisdn", t["msisdn"], t["valid_from"])
        if types[t["account_id"]] != "individual":
            lines[t["account_id"]].append((t["person_key"], assigned.get(k, k)))
        owners[t["msisdn"]].append((t["person_key"], assigned.get(k, k)))
    collapsed = 0
    for members in lines.values():
        ours: dict[str, set[str]] = defaultdict(set)
        for person, pid in members:
            ours[pid].add(person)
        collapsed += any(len(v) > 1 for v in ours.values())
    recycled = [o for o in owners.values() if len({p for p, _ in o}) > 1]
    merged = sum(len({pid for _, pid in o}) < len({p for p, _ in o}) for o in recycled)
    return Quality(
        identifiers=len(truth),
        unresolved=sum(1 for k in truth if k not in predicted),
        pairwise_precision=tp / pred_pairs if pred_pairs else 1.0,
        pairwise_recall=tp / true_pairs if true_pairs else 1.0,
        bcubed_precision=b3p,
        bcubed_recall=b3r,
        shared_accounts=len(lines),
        collapsed_accounts=collapsed,
        recycled_numbers=len(recycled),
        recycled_merged=merged,
    )
