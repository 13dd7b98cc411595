"""The asset graph: every lake table as a Dagster asset, grouped by layer, with the Great
Expectations suites as asset checks.

Stages run as they do in `cdp run`: ingestion is one bounded (availableNow) streaming run per
source on the same checkpoints as `cdp stream`, under the same per-stage locks (a second run of
a stage fails with a message naming the holder). Identity and profiles pass the same promotion
gate as `cdp run` (expectations.gate): a source whose silver rows or quarantine rate break a
blocking expectation is held there, alone, while the other sources reach gold; the silver
checks show which expectation failed.
"""

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg
from dagster import AssetCheckExecutionContext, AssetExecutionContext  # not strings: Dagster checks

from assets.runtime import FRESHNESS_CHECK, Runtime, check_result, freshness_result, key_of
from expectations.suites import MAP_PERSONS
from pipelines.catalog import (
    ACCOUNTS,
    DAILY,
    DRIFT,
    EVIDENCE,
    FACTS,
    LINKS,
    MAP,
    MERGES,
    OUTBOX,
    PROFILES,
    QUARANTINE,
    REJECTED,
    bronze_table,
    ref_table,
    silver_table,
)
from pipelines.locks import StageBusyError

T = TypeVar("T")
SOURCE_HEALTH_CHECK = "quarantine_rate_within_sla"
MAP_PERSONS_CHECK = "identity_map_persons_have_profiles"
RECOMPUTE_CHECK = "full_recompute_matches"

DESCRIPTIONS = {
    QUARANTINE: "Lines refused by silver validation, with the reason and the raw line.",
    DRIFT: "Fields sources sent that their contract does not list (schema drift).",
    EVIDENCE: "Identity evidence: links between identifiers seen in events.",
    LINKS: "Identity links accepted by the rules, per region.",
    MAP: "Every identifier's tenure and the person it belongs to.",
    MERGES: "Person merges and splits, with the link that caused them.",
    ACCOUNTS: "Accounts with their holder, members and lines.",
    DAILY: "Usage per identifier and day (bytes, sessions, payments, app opens).",
    FACTS: "Latest facts per identifier (balance, tariff, consent, cases, region).",
    PROFILES: "One profile per person: identifiers, aggregates, scores, consent.",
    OUTBOX: "Profile change events (created, updated, merged, consent changed) for delivery.",
}


def _spec(table: str, group: str, kinds: set[str], deps: list[str], description: str) -> Any:
    return dg.AssetSpec(
        key=key_of(table),
        group_name=group,
        kinds=kinds,
        deps=[key_of(d) for d in deps],
        description=description,
    )


def _expectation_specs(tables: list[str]) -> list[dg.AssetCheckSpec]:
    """A non-blocking `expectations` check for each of `tables` (their suites warn)."""
    return [dg.AssetCheckSpec("expectations", asset=key_of(t)) for t in tables]


def _busy(exc: StageBusyError) -> dg.Failure:
    return dg.Failure(description=f"{exc}", metadata={"reason": "stage busy"})


def _gate(rt: Runtime, context: AssetExecutionContext) -> dict[str, int]:
    """The promotion gate's silver versions for this step; a held source is logged and its
    steward alerted."""
    from expectations.gate import promotion_gate
    from pipelines.status import Alerts

    gate = promotion_gate(rt.quality())
    if not gate.passed:
        context.log.warning(gate.summary())
    for alert in Alerts(rt.settings.database_url).raise_new(rt.lake, rt.settings):
        context.log.warning(f"alert for {alert['steward']}: {alert['detail']['message']}")
    return gate.until


def _under_identity_lock(rt: Runtime, work: Callable[[], T]) -> T:
    """Run `work` holding the lock `cdp run` and `cdp stream` hold over identity and gold; a
    held lock fails the step with the holder named."""
    from pipelines.locks import stage_lock

    try:
        with stage_lock(rt.settings.paths.checkpoint_root, "identity"):
            return work()
    except StageBusyError as exc:
        raise _busy(exc) from exc


def reference_assets(rt: Runtime) -> dg.AssetsDefinition:
    from pipelines.reference import load_reference

    tables = [ref_table(t) for t in rt.settings.reference.tables]
    specs = [
        _spec(t, "reference", {"delta", "python"}, [], f"Reference data: {t.split('.')[1]}.")
        for t in tables
    ]
    checks = _expectation_specs(tables)

    @dg.multi_asset(name="reference", specs=specs, check_specs=checks, can_subset=False)
    def reference(context: AssetExecutionContext) -> Iterator[Any]:
        landing = rt.settings.paths.landing_root / "reference"
        loads = {
            ref_table(x.table.split(".")[-1]): x
            for x in load_reference(rt.lake, rt.settings.reference, landing)
        }
        for t in tables:
            meta = rt.table_metadata(t)
            if t in loads:
                meta["changed"] = loads[t].changed
            yield dg.MaterializeResult(asset_key=key_of(t), metadata=meta)
        quality = rt.quality()
        for t in tables:
            yield check_result(quality.validate(t), t)

    return reference


def ingest_assets(rt: Runtime) -> dg.AssetsDefinition:
    """Landing -> bronze -> silver for every source, bounded, on the streaming checkpoints."""
    from expectations.suites import SOURCE_HEALTH
    from pipelines.ingest import Ingestion
    from pipelines.status import Alerts

    settings = rt.settings
    sources = settings.sources
    silver = {s: silver_table(settings.contract(s)) for s in sources}
    specs = [
        *(
            _spec(
                bronze_table(s),
                "bronze",
                {"spark", "delta"},
                [],
                f"Raw {s} lines as landed ({settings.contract(s).description})",
            )
            for s in sources
        ),
        *(
            _spec(
                silver[s],
                "silver",
                {"spark", "delta"},
                [bronze_table(s)],
                f"Validated {s} events, typed by the contract "
                f"(steward: {settings.contract(s).steward.name}).",
            )
            for s in sources
        ),
        _spec(
            QUARANTINE,
            "silver",
            {"spark", "delta"},
            [bronze_table(s) for s in sources],
            DESCRIPTIONS[QUARANTINE],
        ),
        _spec(
            DRIFT,
            "silver",
            {"spark", "delta"},
            [bronze_table(s) for s in sources],
            DESCRIPTIONS[DRIFT],
        ),
    ]
    checks = [
        *(dg.AssetCheckSpec("expectations", asset=key_of(bronze_table(s))) for s in sources),
        *(
            # Not blocking here: the promotion gate holds a failing source alone, in identity
            # and gold, rather than stopping every source's promotion.
            dg.AssetCheckSpec("expectations", asset=key_of(silver[s]))
            for s in sources
        ),
        *_expectation_specs([QUARANTINE, DRIFT]),
        dg.AssetCheckSpec(SOURCE_HEALTH_CHECK, asset=key_of(QUARANTINE), blocking=True),
        *(
            dg.AssetCheckSpec(FRESHNESS_CHECK, asset=key_of(t))
            for t in silver.values()
            if t in settings.sla.freshness_minutes
        ),
    ]

    @dg.multi_asset(name="ingest", specs=specs, check_specs=checks, can_subset=False)
    def ingest(context: AssetExecutionContext) -> Iterator[Any]:
        ingestion = Ingestion(rt.spark(), settings, rt.lake, on_event=context.log.info)
        try:
            ingestion.run(available_now=True)
        except StageBusyError as exc:
            raise _busy(exc) from exc
        quarantined: dict[str, dict[str, int]] = {}
        for s, p in ingestion.progress.items():
            for r in p.silver:
                for reason, n in r.quarantined.items():
                    quarantined.setdefault(s, {}).setdefault(reason, 0)
                    quarantined[s][reason] += n
        for s in sources:
            meta = rt.table_metadata(bronze_table(s))
            meta["rows_this_run"] = ingestion.progress[s].bronze_rows
            yield dg.MaterializeResult(asset_key=key_of(bronze_table(s)), metadata=meta)
        for s in sources:
            meta = rt.table_metadata(silver[s])
            meta["valid_this_run"] = sum(r.valid for r in ingestion.progress[s].silver)
            yield dg.MaterializeResult(asset_key=key_of(silver[s]), metadata=meta)
        meta = rt.table_metadata(QUARANTINE)
        meta["quarantined_this_run"] = dg.MetadataValue.json(quarantined)
        yield dg.MaterializeResult(asset_key=key_of(QUARANTINE), metadata=meta)
        raised = Alerts(settings.database_url).raise_new(rt.lake, settings)
        for alert in raised:
            context.log.warning(f"alert for {alert['steward']}: {alert['detail']['message']}")
        meta = rt.table_metadata(DRIFT)
        meta["alerts_raised"] = dg.MetadataValue.json([a["detail"]["message"] for a in raised])
        yield dg.MaterializeResult(asset_key=key_of(DRIFT), metadata=meta)

        quality = rt.quality()
        for s in sources:
            yield check_result(quality.validate(bronze_table(s)), bronze_table(s))
        for s in sources:
            yield check_result(quality.validate(silver[s]), silver[s])
        for t in (QUARANTINE, DRIFT):
            yield check_result(quality.validate(t), t)
        yield check_result(quality.validate(SOURCE_HEALTH), QUARANTINE, SOURCE_HEALTH_CHECK)
        for t in silver.values():
            if t in settings.sla.freshness_minutes:
                yield freshness_result(rt, t)

    return ingest


def identity_assets(rt: Runtime) -> dg.AssetsDefinition:
    from pipelines.identity.stage import refresh_identity

    settings = rt.settings
    silver = [silver_table(settings.contract(s)) for s in settings.sources]
    specs = [
        _spec(EVIDENCE, "identity", {"spark", "delta"}, silver, DESCRIPTIONS[EVIDENCE]),
        *(
            _spec(t, "identity", {"spark", "delta"}, [EVIDENCE], DESCRIPTIONS[t])
            for t in (LINKS, MAP, MERGES, ACCOUNTS)
        ),
    ]
    checks = [
        dg.AssetCheckSpec("expectations", asset=key_of(MAP), blocking=True),
        *_expectation_specs([EVIDENCE, LINKS, MERGES, ACCOUNTS]),
    ]

    @dg.multi_asset(name="identity", specs=specs, check_specs=checks, can_subset=False)
    def identity(context: AssetExecutionContext) -> Iterator[Any]:
        r = _under_identity_lock(
            rt, lambda: refresh_identity(rt.spark(), rt.lake, settings, _gate(rt, context))
        )
        context.log.info(
            f"identity ({r.mode}): {r.evidence_rows:,} evidence rows, {r.persons:,} persons, "
            f"{r.merges} merges, {r.splits} splits"
        )
        for t in (EVIDENCE, LINKS, MAP, MERGES, ACCOUNTS):
            meta = rt.table_metadata(t)
            if t == MAP:
                meta |= {
                    "mode": r.mode,
                    "merges": r.merges,
                    "splits": r.splits,
                    "refused_links": r.refused,
                }
            yield dg.MaterializeResult(asset_key=key_of(t), metadata=meta)
        quality = rt.quality()
        for t in (MAP, EVIDENCE, LINKS, MERGES, ACCOUNTS):
            yield check_result(quality.validate(t), t)

    return identity


def gold_assets(rt: Runtime) -> dg.AssetsDefinition:
    from pipelines.gold.stage import refresh_gold

    settings = rt.settings
    silver = [silver_table(settings.contract(s)) for s in settings.sources]
    specs = [
        _spec(DAILY, "gold", {"polars", "delta"}, [*silver, MAP], DESCRIPTIONS[DAILY]),
        _spec(FACTS, "gold", {"polars", "delta"}, [*silver, MAP], DESCRIPTIONS[FACTS]),
        _spec(
            PROFILES,
            "gold",
            {"polars", "delta"},
            [DAILY, FACTS, MAP, ACCOUNTS, *(ref_table(t) for t in settings.reference.tables)],
            DESCRIPTIONS[PROFILES],
        ),
        _spec(OUTBOX, "gold", {"polars", "delta"}, [PROFILES, MERGES], DESCRIPTIONS[OUTBOX]),
    ]
    checks = [
        dg.AssetCheckSpec("expectations", asset=key_of(PROFILES), blocking=True),
        dg.AssetCheckSpec(MAP_PERSONS_CHECK, asset=key_of(PROFILES)),
        *_expectation_specs([DAILY, FACTS, OUTBOX]),
        *(
            [dg.AssetCheckSpec(FRESHNESS_CHECK, asset=key_of(PROFILES))]
            if PROFILES in settings.sla.freshness_minutes
            else []
        ),
    ]

    @dg.multi_asset(name="gold", specs=specs, check_specs=checks, can_subset=False)
    def gold(context: AssetExecutionContext) -> Iterator[Any]:
        g = _under_identity_lock(
            rt, lambda: refresh_gold(rt.lake, settings, until=_gate(rt, context))
        )
        context.log.info(
            f"profiles ({g.mode}): {g.events:,} events, {g.created:,} created, "
            f"{g.updated:,} updated, {g.removed:,} removed; outbox {g.outbox:,}"
        )
        for t in (DAILY, FACTS, PROFILES, OUTBOX):
            meta = rt.table_metadata(t)
            if t == PROFILES:
                meta |= {
                    "mode": g.mode,
                    "created": g.created,
                    "updated": g.updated,
                    "removed": g.removed,
                }
            yield dg.MaterializeResult(asset_key=key_of(t), metadata=meta)
        quality = rt.quality()
        yield check_result(quality.validate(PROFILES), PROFILES)
        yield check_result(quality.validate(MAP_PERSONS), PROFILES, MAP_PERSONS_CHECK)
        for t in (DAILY, FACTS, OUTBOX):
            yield check_result(quality.validate(t), t)
        if PROFILES in settings.sla.freshness_minutes:
            yield freshness_result(rt, PROFILES)

    return gold


def recompute_checks(rt: Runtime) -> list[dg.AssetChecksDefinition]:
    """The scheduled full recomputes, compared with the incremental state: any merge or split
    the full identity resolution finds, or any profile it changes, fails the check (and the
    recompute has corrected it)."""
    from pipelines.gold.stage import recompute_profiles
    from pipelines.identity.full import rebuild_identity

    settings = rt.settings

    @dg.asset_check(
        asset=key_of(MAP),
        name=RECOMPUTE_CHECK,
        description="A full identity recompute finds no merge or split the "
        "incremental refreshes missed.",
    )
    def identity_recompute(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        r = _under_identity_lock(
            rt, lambda: rebuild_identity(rt.spark(), rt.lake, settings, progress=context.log.info)
        )
        differences = r.merges + r.splits
        return dg.AssetCheckResult(
            passed=differences == 0,
            description=f"full recompute: {r.merges} merges and {r.splits} splits against the "
            "incremental map",
            metadata={
                "merges": r.merges,
                "splits": r.splits,
                "persons": r.persons,
                "seconds": round(r.seconds, 1),
            },
        )

    @dg.asset_check(
        asset=key_of(PROFILES),
        name=RECOMPUTE_CHECK,
        additional_deps=[key_of(MAP)],
        description="Every profile recomputed from daily usage and facts equals "
        "the incrementally maintained one.",
    )
    def profiles_recompute(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        g = _under_identity_lock(rt, lambda: recompute_profiles(rt.lake, settings))
        differences = g.created + g.updated + g.removed
        return dg.AssetCheckResult(
            passed=differences == 0,
            description=f"full recompute: {g.created} created, {g.updated} updated, "
            f"{g.removed} removed",
            metadata={
                "created": g.created,
                "updated": g.updated,
                "removed": g.removed,
                "seconds": round(g.seconds, 1),
            },
        )

    return [identity_recompute, profiles_recompute]


def maintenance_assets(rt: Runtime) -> dg.AssetsDefinition:
    """Nightly compaction and clean-up of every table, so micro-batches do not leave thousands
    of small files and replaced files do not pile up past their retention."""
    from pipelines.locks import stage_lock

    settings = rt.settings
    # Written by the ingest queries with blind appends, which never conflict with a compaction:
    # these are compacted while the stream runs. The rest is written under the identity lock.
    appended = {bronze_table(s) for s in settings.sources} | {
        silver_table(settings.contract(s)) for s in settings.sources
    }
    appended |= {QUARANTINE, DRIFT, REJECTED}

    @dg.asset(
        key=["ops", "lake_maintenance"],
        group_name="maintenance",
        kinds={"spark", "delta"},
        description="Delta OPTIMIZE (bin-packing small files) and VACUUM (files older than "
        "each table's delta.deletedFileRetentionDuration) on every table of the lake.",
    )
    def lake_maintenance(context: AssetExecutionContext) -> dg.MaterializeResult:
        tables = rt.lake.tables()
        files: dict[str, tuple[int, int, int]] = {}

        def tidy(names: list[str]) -> None:
            for t in names:
                before, after = rt.lake.compact(t, stage="maintenance")
                files[t] = (before, after, rt.lake.vacuum(t))
                context.log.info(f"{t}: {before} -> {after} files, {files[t][2]} vacuumed")

        tidy([t for t in tables if t in appended])
        rest = [t for t in tables if t not in appended]
        skipped = ""
        try:
            with stage_lock(settings.paths.checkpoint_root, "identity"):
                tidy(rest)
        except StageBusyError as exc:
            skipped = f"{len(rest)} tables skipped until the next run: {exc}"
            context.log.warning(skipped)
        return dg.MaterializeResult(
            metadata={
                "tables": len(files),
                "files_before": sum(f[0] for f in files.values()),
                "files_after": sum(f[1] for f in files.values()),
                "files_vacuumed": sum(f[2] for f in files.values()),
                "skipped": skipped or "none",
            }
        )

    return lake_maintenance
