"""The asset graph: every lake table as a Dagster asset, grouped by layer, with the Great
Expectations suites as asset checks.

Stages run as they do in `cdp run`: ingestion is one bounded (availableNow) streaming run per
source on the same checkpoints as `cdp stream`, under the same per-stage locks (a second run of
a stage fails with a message naming the holder). Identity and profiles are one step, the
promotion path `cdp run` takes (pipelines.promotion): a source whose silver rows or quarantine
rate break a blocking expectation is held at the gate, alone, while the other sources reach
gold; the silver checks show which expectation failed.
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
from dagster import AssetCheckExecutionContext, AssetExecutionContext  # not strings: Dagster checks

from assets.runtime import (
    FRESHNESS_CHECK,
    CdpResource,
    Runtime,
    check_result,
    freshness_result,
    key_of,
)
from expectations.suites import MAP_PERSONS
from pipelines.config import Settings
from pipelines.lakehouse.catalog import (
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
    bronze_table,
    ref_table,
    silver_table,
    stream_appended,
)
from pipelines.lakehouse.locks import StageBusyError

if TYPE_CHECKING:
    from pipelines.ingest.stream import Ingestion

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


EXPECTATIONS_HELP = (
    "The table's Great Expectations suite (expectations/suites) on the rows this run covers; "
    "failures name the expectation, the count and example rows (docs/quality.md)."
)
SOURCE_HEALTH_HELP = (
    "Quarantined / landed lines per source in the last day within conf/sla.yaml. A source "
    "over its rate is held at the promotion gate alone (its steward alerted); the others go on."
)
FRESHNESS_HELP = (
    "The table's newest event within its freshness SLA (conf/sla.yaml), measured against the "
    "data clock; a warning: stale data still serves."
)
MAP_PERSONS_HELP = "Every person of the identity map has a profile."


def _expectation_specs(tables: list[str], *, blocking: bool = False) -> list[dg.AssetCheckSpec]:
    """An `expectations` check for each of `tables` (non-blocking: their suites warn)."""
    return [
        dg.AssetCheckSpec(
            "expectations", asset=key_of(t), blocking=blocking, description=EXPECTATIONS_HELP
        )
        for t in tables
    ]


def _freshness_spec(table: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(FRESHNESS_CHECK, asset=key_of(table), description=FRESHNESS_HELP)


def _busy(exc: StageBusyError) -> dg.Failure:
    return dg.Failure(description=f"{exc}", metadata={"reason": "stage busy"})


def _under_identity_lock(rt: Runtime, work: Callable[[], T]) -> T:
    """Run `work` holding the lock `cdp run` and `cdp stream` hold over identity and gold; a
    held lock fails the step with the holder named."""
    from pipelines.lakehouse.locks import stage_lock

    try:
        with stage_lock(rt.settings.paths.checkpoint_root, "identity"):
            return work()
    except StageBusyError as exc:
        raise _busy(exc) from exc


def reference_assets(settings: Settings) -> dg.AssetsDefinition:
    from pipelines.ingest.reference import load_reference

    tables = [ref_table(t) for t in settings.reference.tables]
    specs = [
        _spec(t, "reference", {"delta", "python"}, [], f"Reference data: {t.split('.')[1]}.")
        for t in tables
    ]
    checks = _expectation_specs(tables)

    @dg.multi_asset(name="reference", specs=specs, check_specs=checks, can_subset=True)
    def reference(context: AssetExecutionContext, cdp: CdpResource) -> Iterator[Any]:
        rt = cdp.runtime()
        landing = settings.paths.landing_root / "reference"
        chosen = [t for t in tables if key_of(t) in context.selected_asset_keys]
        contract = settings.reference.model_copy(
            update={
                "tables": {
                    n: c for n, c in settings.reference.tables.items() if ref_table(n) in chosen
                }
            }
        )
        loads = {
            ref_table(x.table.split(".")[-1]): x for x in load_reference(rt.lake, contract, landing)
        }
        for t in chosen:
            meta = rt.table_metadata(t)
            if t in loads:
                meta["changed"] = loads[t].changed
            yield dg.MaterializeResult(asset_key=key_of(t), metadata=meta)
        quality = rt.quality()
        for t in chosen:
            if dg.AssetCheckKey(key_of(t), "expectations") in context.selected_asset_check_keys:
                yield check_result(quality.validate(t), t)

    return reference


def _ingest_specs(settings: Settings) -> list[Any]:
    """Bronze and silver of every source, quarantine and drift."""
    sources = settings.sources
    bronze = [bronze_table(s) for s in sources]
    return [
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
                silver_table(settings.contract(s)),
                "silver",
                {"spark", "delta"},
                [bronze_table(s)],
                f"Validated {s} events, typed by the contract "
                f"(steward: {settings.contract(s).steward.name}).",
            )
            for s in sources
        ),
        _spec(QUARANTINE, "silver", {"spark", "delta"}, bronze, DESCRIPTIONS[QUARANTINE]),
        _spec(DRIFT, "silver", {"spark", "delta"}, bronze, DESCRIPTIONS[DRIFT]),
    ]


def _ingest_checks(settings: Settings) -> list[dg.AssetCheckSpec]:
    silver = [silver_table(settings.contract(s)) for s in settings.sources]
    return [
        *_expectation_specs([bronze_table(s) for s in settings.sources]),
        # Not blocking here: the promotion gate holds a failing source alone, in identity and
        # gold, rather than stopping every source's promotion.
        *_expectation_specs(silver),
        *_expectation_specs([QUARANTINE, DRIFT]),
        # Not blocking either: a breach fails the check, and the gate holds that source alone;
        # blocking, it failed the whole run and no source reached gold.
        dg.AssetCheckSpec(
            SOURCE_HEALTH_CHECK, asset=key_of(QUARANTINE), description=SOURCE_HEALTH_HELP
        ),
        *(_freshness_spec(t) for t in silver if t in settings.sla.freshness_minutes),
    ]


def _quarantined(ingestion: "Ingestion") -> dict[str, dict[str, int]]:
    """Lines quarantined in this run, per source and reason."""
    out: dict[str, dict[str, int]] = {}
    for s, p in ingestion.progress.items():
        for r in p.silver:
            for reason, n in r.quarantined.items():
                out.setdefault(s, {}).setdefault(reason, 0)
                out[s][reason] += n
    return out


def _ingest_materialisations(
    rt: Runtime, ingestion: "Ingestion", raised: list[dict[str, Any]], sources: list[str]
) -> Iterator[dg.MaterializeResult]:
    settings = rt.settings
    for s in sources:
        meta = rt.table_metadata(bronze_table(s))
        meta["rows_this_run"] = ingestion.progress[s].bronze_rows
        yield dg.MaterializeResult(asset_key=key_of(bronze_table(s)), metadata=meta)
    for s in sources:
        silver = silver_table(settings.contract(s))
        meta = rt.table_metadata(silver)
        meta["valid_this_run"] = sum(r.valid for r in ingestion.progress[s].silver)
        yield dg.MaterializeResult(asset_key=key_of(silver), metadata=meta)
    meta = rt.table_metadata(QUARANTINE)
    meta["quarantined_this_run"] = dg.MetadataValue.json(_quarantined(ingestion))
    yield dg.MaterializeResult(asset_key=key_of(QUARANTINE), metadata=meta)
    meta = rt.table_metadata(DRIFT)
    meta["alerts_raised"] = dg.MetadataValue.json([a["detail"]["message"] for a in raised])
    yield dg.MaterializeResult(asset_key=key_of(DRIFT), metadata=meta)


def _ingest_check_results(
    rt: Runtime, sources: list[str], wanted: Callable[[str, str], bool]
) -> Iterator[dg.AssetCheckResult]:
    """The checks of `sources`' tables, quarantine and drift that `wanted(table, check)`."""
    from expectations.suites import SOURCE_HEALTH

    settings, quality = rt.settings, rt.quality()
    bronze = [bronze_table(s) for s in sources]
    silver = [silver_table(settings.contract(s)) for s in sources]
    for t in (*bronze, *silver, QUARANTINE, DRIFT):
        if wanted(t, "expectations"):
            yield check_result(quality.validate(t), t)
    if wanted(QUARANTINE, SOURCE_HEALTH_CHECK):
        yield check_result(quality.validate(SOURCE_HEALTH), QUARANTINE, SOURCE_HEALTH_CHECK)
    for t in silver:
        if t in settings.sla.freshness_minutes and wanted(t, FRESHNESS_CHECK):
            yield freshness_result(rt, t)


def ingest_assets(settings: Settings) -> dg.AssetsDefinition:
    """Landing -> bronze -> silver for every source, bounded, on the streaming checkpoints.
    A selection of some sources' tables ingests those sources only; quarantine and drift are
    every source's, so selecting either ingests them all."""

    @dg.multi_asset(
        name="ingest",
        specs=_ingest_specs(settings),
        check_specs=_ingest_checks(settings),
        can_subset=True,
    )
    def ingest(context: AssetExecutionContext, cdp: CdpResource) -> Iterator[Any]:
        from pipelines.ingest.stream import Ingestion
        from pipelines.ops.status import Alerts

        rt = cdp.runtime()
        selected = context.selected_asset_keys
        shared = {key_of(QUARANTINE), key_of(DRIFT)} & selected
        sources = [
            s
            for s in settings.sources
            if shared
            or {key_of(bronze_table(s)), key_of(silver_table(settings.contract(s)))} & selected
        ]
        ingestion = Ingestion(rt.spark(), rt.settings, rt.lake, on_event=context.log.info)
        try:
            ingestion.run(sources, available_now=True)
        except StageBusyError as exc:
            raise _busy(exc) from exc
        raised = Alerts(rt.settings.database_url).raise_new(rt.lake, rt.settings)
        for alert in raised:
            context.log.warning(f"alert for {alert['steward']}: {alert['detail']['message']}")
        for done in _ingest_materialisations(rt, ingestion, raised, sources):
            if done.asset_key in selected:
                yield done
        checks = context.selected_asset_check_keys
        yield from _ingest_check_results(
            rt, sources, lambda t, check: dg.AssetCheckKey(key_of(t), check) in checks
        )

    return ingest


def promotion_assets(settings: Settings) -> dg.AssetsDefinition:
    """Identity and gold in one step of the one promotion path (pipelines.promotion): one gate
    judges silver, and identity and gold both read it up to the versions that gate judged, as
    in `cdp run` and `cdp stream`. Not subsettable: gold without the identity refresh it reads
    would profile persons the map no longer has, and the two are one exactly-once step."""
    silver = [silver_table(settings.contract(s)) for s in settings.sources]
    references = [ref_table(t) for t in settings.reference.tables]
    specs = [
        _spec(EVIDENCE, "identity", {"spark", "delta"}, silver, DESCRIPTIONS[EVIDENCE]),
        *(
            _spec(t, "identity", {"spark", "delta"}, [EVIDENCE], DESCRIPTIONS[t])
            for t in (LINKS, MAP, MERGES, ACCOUNTS)
        ),
        _spec(DAILY, "gold", {"spark", "delta"}, [*silver, MAP], DESCRIPTIONS[DAILY]),
        _spec(FACTS, "gold", {"spark", "delta"}, [*silver, MAP], DESCRIPTIONS[FACTS]),
        _spec(
            PROFILES,
            "gold",
            {"spark", "delta"},
            [DAILY, FACTS, MAP, ACCOUNTS, *references],
            DESCRIPTIONS[PROFILES],
        ),
        _spec(OUTBOX, "gold", {"spark", "delta"}, [PROFILES, MERGES], DESCRIPTIONS[OUTBOX]),
    ]
    fresh = PROFILES in settings.sla.freshness_minutes
    checks = [
        *_expectation_specs([MAP], blocking=True),
        *_expectation_specs([EVIDENCE, LINKS, MERGES, ACCOUNTS]),
        *_expectation_specs([PROFILES], blocking=True),
        dg.AssetCheckSpec(MAP_PERSONS_CHECK, asset=key_of(PROFILES), description=MAP_PERSONS_HELP),
        *_expectation_specs([DAILY, FACTS, OUTBOX]),
        *([_freshness_spec(PROFILES)] if fresh else []),
    ]

    @dg.multi_asset(name="promote", specs=specs, check_specs=checks, can_subset=False)
    def promote(context: AssetExecutionContext, cdp: CdpResource) -> Iterator[Any]:
        rt = cdp.runtime()
        promotion = _under_identity_lock(rt, lambda: rt.promoter()(rt.spark()))
        for level, line in promotion.report():
            (context.log.warning if level == "warning" else context.log.info)(line)
        r, g = promotion.identity, promotion.gold
        changes = {
            MAP: {"mode": r.mode, "merges": r.merges, "splits": r.splits, "refused": r.refused},
            PROFILES: {
                "mode": g.mode,
                "created": g.created,
                "updated": g.updated,
                "removed": g.removed,
            },
        }
        for t in (EVIDENCE, LINKS, MAP, MERGES, ACCOUNTS, DAILY, FACTS, PROFILES, OUTBOX):
            meta = rt.table_metadata(t) | changes.get(t, {})
            yield dg.MaterializeResult(asset_key=key_of(t), metadata=meta)
        quality = rt.quality()
        for t in (MAP, EVIDENCE, LINKS, MERGES, ACCOUNTS, PROFILES):
            yield check_result(quality.validate(t), t)
        yield check_result(quality.validate(MAP_PERSONS), PROFILES, MAP_PERSONS_CHECK)
        for t in (DAILY, FACTS, OUTBOX):
            yield check_result(quality.validate(t), t)
        if fresh:
            yield freshness_result(rt, PROFILES)

    return promote


def recompute_checks(settings: Settings) -> list[dg.AssetChecksDefinition]:
    """The scheduled full recomputes, compared with the incremental state: any merge or split
    the full identity resolution finds, or any profile it changes, fails the check (and the
    recompute has corrected it)."""
    from pipelines.identity.full import rebuild_identity
    from pipelines.profile.stage import recompute_profiles

    @dg.asset_check(
        asset=key_of(MAP),
        name=RECOMPUTE_CHECK,
        description="A full identity recompute finds no merge or split the "
        "incremental refreshes missed.",
    )
    def identity_recompute(
        context: AssetCheckExecutionContext, cdp: CdpResource
    ) -> dg.AssetCheckResult:
        rt = cdp.runtime()
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
    def profiles_recompute(
        context: AssetCheckExecutionContext, cdp: CdpResource
    ) -> dg.AssetCheckResult:
        rt = cdp.runtime()
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


def maintenance_assets(settings: Settings) -> dg.AssetsDefinition:
    """Nightly compaction and clean-up of every table, so micro-batches do not leave thousands
    of small files and replaced files do not pile up past their retention."""
    from pipelines.lakehouse.locks import stage_lock

    # Written by the ingest queries with blind appends, which never conflict with a compaction:
    # these are compacted while the stream runs. The rest is written under the identity lock.
    appended = stream_appended(settings)

    @dg.asset(
        key=["ops", "lake_maintenance"],
        group_name="maintenance",
        kinds={"spark", "delta"},
        description="Delta OPTIMIZE (bin-packing small files) and VACUUM (files older than "
        "each table's delta.deletedFileRetentionDuration) on every table of the lake.",
    )
    def lake_maintenance(context: AssetExecutionContext, cdp: CdpResource) -> dg.MaterializeResult:
        rt = cdp.runtime()
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


def retention_assets(settings: Settings) -> dg.AssetsDefinition:
    """Nightly retention (conf/retention.yaml): rows past their table's days deleted, the files
    that held them vacuumed, old audit records deleted."""
    from pipelines.lakehouse.locks import stage_lock
    from pipelines.ops.retention import apply_retention

    @dg.asset(
        key=["ops", "retention"],
        group_name="maintenance",
        kinds={"spark", "delta"},
        description="Deletes each table's rows older than its retention in conf/retention.yaml "
        "(raw lines by ingestion time, events by event time), vacuums the files that held them "
        "after retention.vacuum_hours, and deletes audit records older than audit_days.",
    )
    def retention(context: AssetExecutionContext, cdp: CdpResource) -> dg.MaterializeResult:
        rt = cdp.runtime()
        try:
            with stage_lock(settings.paths.checkpoint_root, "identity"):
                report = apply_retention(
                    rt.lake, rt.settings, locked=True, progress=context.log.info
                )
        except StageBusyError:
            report = apply_retention(rt.lake, rt.settings, locked=False, progress=context.log.info)
        return dg.MaterializeResult(
            metadata={
                "rows_deleted": dg.MetadataValue.json(report.deleted),
                "files_vacuumed": dg.MetadataValue.json(report.vacuumed),
                "cutoffs": dg.MetadataValue.json(report.cutoffs),
                "skipped": ", ".join(report.skipped) or "none",
                "vacuum_waits_for_readers": ", ".join(report.vacuum_waits) or "none",
            }
        )

    return retention
