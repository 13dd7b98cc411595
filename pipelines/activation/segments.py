"""Segments: saved rules (pipelines/profile/rules.py) over the policy's attributes, and their
preview on a DuckDB `profiles` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.config import PolicyCfg
from pipelines.profile.rules import Compiled, RuleCompiler, RuleError


@dataclass(frozen=True)
class Preview:
    members: int  # profiles the rule matches
    consented: int  # of those, with the purpose in force (what an export or push would reach)
    sample: list[str]  # person ids of consented members
    churn_risk: list[int]  # reachable members per churn-risk tenth (0-0.1, ..., 0.9-1)
    churn_risk_unknown: int  # reachable members whose churn risk may not be used (or is none)
    value_segment: dict[str, int]  # reachable members per value segment (largest first)


NOT_CONSENTED = "(not consented)"  # a chart's bucket for values a person did not consent to


def preview(
    db: Any,
    compiled: Compiled,
    purpose: str,
    policy: PolicyCfg,
    compiler: RuleCompiler,
    sample: int = 10,
) -> Preview:
    """Count the members of a compiled rule in a DuckDB `profiles` table, how many of them may
    be reached for `purpose` (its consent, or contract, in force), and how the reachable ones
    spread over churn risk and value segment, each counted only where the person's basis for
    that attribute is met (the others are counted apart, never by their value)."""
    if purpose not in policy.purposes:
        raise RuleError("purpose", f"unknown purpose {purpose!r}; one of {sorted(policy.purposes)}")
    in_force = f'coalesce("consent_{purpose}_granted", false)'  # purpose checked above
    members, consented = db.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {in_force}) FROM profiles WHERE {compiled.sql}",
        compiled.params,
    ).fetchone()
    reached = f"FROM profiles WHERE {compiled.sql} AND {in_force}"
    ids = db.execute(
        f"SELECT person_id {reached} ORDER BY person_id LIMIT ?", [*compiled.params, sample]
    ).fetchall()
    tenths = [0] * 10
    unknown = 0
    risk = compiler.known("churn_risk")
    for bucket, n in db.execute(
        # least() skips NULLs, so an unknown risk is kept NULL before it is bucketed
        f"SELECT CASE WHEN {risk} IS NOT NULL THEN least(floor({risk} * 10), 9)::INT END, "
        f"count(*) {reached} GROUP BY 1",
        compiled.params,
    ).fetchall():
        if bucket is None:
            unknown = int(n)
        else:
            tenths[max(0, bucket)] = int(n)
    value = compiler.known("value_segment")
    segments = db.execute(
        f"SELECT CASE WHEN {compiler.basis('value_segment')} "
        f"THEN coalesce({value}, '(none)') ELSE '{NOT_CONSENTED}' END, count(*) {reached} "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 12",
        compiled.params,
    ).fetchall()
    return Preview(
        int(members),
        int(consented),
        [i for (i,) in ids],
        tenths,
        unknown,
        {s: int(n) for s, n in segments},
    )
