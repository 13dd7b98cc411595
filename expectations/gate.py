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

    @property
    def blocking(self) -> list[Failure]:
        return [f for o in self.outcomes for f in o.blocking]

    @property
    def passed(self) -> bool:
        return not self.blocking

    def summary(self) -> str:
        if self.passed:
            checked = sum(o.rows for o in self.outcomes if o.table != SOURCE_HEALTH)
            return f"quality gate passed ({checked:,} silver rows checked)"
        lines = "\n".join(f"  - {f}" for f in self.blocking)
        return f"quality gate FAILED; gold not updated:\n{lines}"


def gated_tables(quality: Quality) -> list[str]:
    """The silver tables of every source, then the per-source quarantine rate."""
    settings = quality.settings
    return [*(silver_table(settings.contract(s)) for s in settings.sources), SOURCE_HEALTH]


def promotion_gate(quality: Quality) -> GateResult:
    """Validate what would be promoted now."""
    return GateResult([quality.validate(t) for t in gated_tables(quality)])
