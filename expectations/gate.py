"""The promotion gate, per source: each source's silver rows waiting for gold are validated
first, and a failed blocking expectation of a source (its silver suite, or its quarantine rate
against the SLA) holds that source alone. Identity and profiles take in every other source's
rows and read the held one only up to what was promoted before (or released).

Held rows stay in silver and are judged again on every step until the source is fixed or its
steward releases them (`cdp quality release`); the steward is alerted when the hold starts, and
contract status shows it while it lasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from expectations.runner import Failure, Outcome, Quality
from expectations.suites import SOURCE_HEALTH
from pipelines.lakehouse.catalog import silver_table
from pipelines.ops.releases import released_version
from pipelines.ops.status import GateHold, record_gate
from pipelines.profile.state import silver_ranges

NOTHING = -1  # `until` of a held source never promoted before: read none of it


@dataclass(frozen=True)
class GateResult:
    outcomes: list[Outcome]
    # The silver versions identity and gold may read: for a passing source, those judged now
    # (a batch committed while the gate ran waits for the next gate instead of slipping
    # through unjudged); for a held one, what was promoted or released before.
    until: dict[str, int]
    held: dict[str, list[Failure]]  # source -> the blocking failures holding it

    @property
    def blocking(self) -> list[Failure]:
        return [f for fs in self.held.values() for f in fs]

    @property
    def passed(self) -> bool:
        return not self.held

    @property
    def silver_rows(self) -> int:
        """Silver rows judged (those waiting for promotion)."""
        return sum(o.rows for o in self.outcomes if o.table != SOURCE_HEALTH)

    def summary(self) -> str:
        if self.passed:
            return f"quality gate passed ({self.silver_rows:,} silver rows checked)"
        lines = "\n".join(dict.fromkeys(f"  - {f}" for f in self.blocking))
        held = ", ".join(sorted(self.held))
        return (
            f"quality gate HELD {held} (the other sources go on to gold); "
            f"release after review: cdp quality release silver.<source>\n{lines}"
        )


def gated_tables(quality: Quality) -> list[str]:
    """The silver tables of every source, then the per-source quarantine rate."""
    settings = quality.settings
    return [*(silver_table(settings.contract(s)) for s in settings.sources), SOURCE_HEALTH]


def promotion_gate(quality: Quality, now: datetime | None = None) -> GateResult:
    """Validate what would be promoted now, pinned to the silver versions of this moment, and
    record which sources are held (contract status shows it, alerts tell the steward)."""
    lake, settings = quality.lake, quality.settings
    tables = {s: silver_table(settings.contract(s)) for s in settings.sources}
    until = {t: v for t in tables.values() if (v := lake.version(t)) is not None}
    outcomes = {t: quality.validate(t, until) for t in gated_tables(quality)}
    health = outcomes[SOURCE_HEALTH].blocking
    held: dict[str, list[Failure]] = {}
    for s, t in tables.items():
        # A health failure that names no source (an error in the check) holds every source.
        mine = [f for f in health if not f.subjects or s in f.subjects]
        if failures := [*outcomes[t].blocking, *mine]:
            held[s] = failures
    ranges = silver_ranges(lake, settings)
    for s in held:
        t = tables[s]
        done = ranges[s][0] if s in ranges else None
        released = released_version(settings, t)
        floor = max(v for v in (done, released, NOTHING) if v is not None)
        until[t] = min(floor, until.get(t, NOTHING))
    record_gate(
        settings,
        {s: GateHold([str(f) for f in fs], until[tables[s]]) for s, fs in held.items()},
        now or datetime.now(UTC),
    )
    return GateResult(list(outcomes.values()), until, held)
