"""The promotion gate: silver rows waiting for gold are validated first; a failed blocking
expectation keeps identity and profiles (and so the serving snapshot) on the last good version.

The rows stay in silver and are judged again on the next run, so gold stays where it is until
the source is fixed and the steward releases the range (`cdp quality release`)."""

from __future__ import annotations

from dataclasses import dataclass

from expectations.runner import Failure, Outcome, Quality
from expectations.suites import SOURCE_HEALTH
from pipelines.silver import silver_table


@dataclass(frozen=True)
class GateResult:
    outcomes: list[Outcome]
    # the silver versions judged: identity and gold read no further, so a batch committed
    # while the gate ran waits for the next gate instead of slipping through unjudged
    until: dict[str, int]

    @property
    def blocking(self) -> list[Failure]:
        return [f for o in self.outcomes for f in o.blocking]

    @property
    def passed(self) -> bool:
        return not self.blocking

    @property
    def silver_rows(self) -> int:
        """Silver rows judged (those waiting for promotion)."""
        return sum(o.rows for o in self.outcomes if o.table != SOURCE_HEALTH)

    def summary(self) -> str:
        if self.passed:
            return f"quality gate passed ({self.silver_rows:,} silver rows checked)"
        lines = "\n".join(f"  - {f}" for f in self.blocking)
        return f"quality gate FAILED; gold not updated:\n{lines}"


def gated_tables(quality: Quality) -> list[str]:
    """The silver tables of every source, then the per-source quarantine rate."""
    settings = quality.settings
    return [*(silver_table(settings.contract(s)) for s in settings.sources), SOURCE_HEALTH]


def promotion_gate(quality: Quality) -> GateResult:
    """Validate what would be promoted now, pinned to the silver versions of this moment."""
    lake, settings = quality.lake, quality.settings
    until = {
        t: v
        for t in (silver_table(settings.contract(s)) for s in settings.sources)
        if (v := lake.version(t)) is not None
    }
    return GateResult([quality.validate(t, until) for t in gated_tables(quality)], until)
