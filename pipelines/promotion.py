"""The one promotion path: quality gate -> identity -> gold, then serving picks up the new gold
version by itself (the API's snapshot and the deliverer follow `gold.profiles` and `ops.outbox`).

`cdp run`, `cdp stream` (after each silver micro-batch) and Dagster's `promote` asset all call
`Promoter`, so the three give the same tables from the same silver: one gate per step, and
identity and gold both read silver only up to the versions that gate judged. The caller holds
the identity stage lock; a held source is reported and its steward alerted here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from expectations.gate import GateResult, promotion_gate
from expectations.runner import Quality
from pipelines.config import Settings
from pipelines.identity.outputs import IdentityResult
from pipelines.identity.stage import refresh_identity
from pipelines.lakehouse.lake import Lake
from pipelines.ops.releases import releases
from pipelines.ops.status import Alerts
from pipelines.profile.stage import GoldResult, refresh_gold

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class Promotion:
    """What one step promoted, and the alerts it raised for stewards."""

    gate: GateResult
    alerts: list[dict[str, Any]]
    identity: IdentityResult
    gold: GoldResult
    seconds: dict[str, float]  # per part of the step: gate, alerts, identity, gold

    def report(self) -> list[tuple[str, str]]:
        """(level, line) pairs for a console or a run log: the gate, new alerts, then what
        identity and gold changed (quiet when a step had nothing to do)."""
        gate, r, g = self.gate, self.identity, self.gold
        lines: list[tuple[str, str]] = []
        if not gate.passed:
            lines.append(("warning", gate.summary()))
        elif gate.silver_rows:
            lines.append(("info", gate.summary()))
        lines += [
            ("warning", f"alert for {a['steward']}: {a['detail']['message']}") for a in self.alerts
        ]
        if r.evidence_rows:
            refused = ", ".join(f"{k} {v}" for k, v in sorted(r.refused_by_reason.items()))
            lines.append(
                (
                    "info",
                    f"identity ({r.mode}): {r.evidence_rows:,} evidence rows, {r.regions:,} "
                    f"regions, {r.identifiers:,} identifiers in {r.persons:,} persons, "
                    f"{r.merges} merges, {r.splits} splits, {r.refused} refused links"
                    f"{f' ({refused})' if refused else ''} in {r.seconds:.1f} s",
                )
            )
        if g.mode != "none":
            events = ", ".join(f"{k} {v}" for k, v in g.by_type.items())
            lines.append(
                (
                    "info",
                    f"profiles ({g.mode}, windows end {g.clock_day}): {g.events:,} events, "
                    f"{g.persons:,} persons recomputed, {g.created:,} created, {g.updated:,} "
                    f"updated, {g.removed:,} removed; outbox {g.outbox:,}"
                    f"{f' ({events})' if events else ''} in {g.seconds:.1f} s",
                )
            )
        if r.evidence_rows or g.mode != "none":
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
            lines.append(
                ("info", f"promotion step in {sum(self.seconds.values()):.1f} s ({parts})")
            )
        return lines


class Promoter:
    """Runs gate -> identity -> gold for one settings and lake, keeping what is slow to build
    (the Great Expectations project) across steps."""

    def __init__(self, settings: Settings, lake: Lake, quality: Quality | None = None) -> None:
        self.settings = settings
        self.lake = lake
        self.alerts = Alerts(settings.database_url)
        self._quality = quality
        self._releases: dict[str, dict[str, object]] | None = None

    @property
    def quality(self) -> Quality:
        if self._quality is None:  # built on first use: GX takes seconds to load
            self._quality = Quality(self.settings, self.lake)
        return self._quality

    def released(self) -> bool:
        """A steward released a table since the last step: run again now, not on a new batch."""
        return self._releases is not None and releases(self.settings) != self._releases

    def __call__(self, spark: SparkSession) -> Promotion:
        settings, lake = self.settings, self.lake
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def timed(part: str) -> None:
            nonlocal clock
            seconds[part], clock = time.perf_counter() - clock, time.perf_counter()

        self._releases = releases(settings)
        gate = promotion_gate(self.quality)
        timed("gate")
        alerts = self.alerts.raise_new(lake, settings)
        timed("alerts")
        identity = refresh_identity(spark, lake, settings, gate.until)
        timed("identity")
        gold = refresh_gold(lake, settings, until=gate.until)
        timed("gold")
        return Promotion(gate, alerts, identity, gold, seconds)
