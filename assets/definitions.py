"""The Definitions object: the asset graph, the jobs that run it, the landing-zone sensor and
the schedules (full recompute with comparison, reference loads, lake maintenance)."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from assets.graph import (
    ingest_assets,
    maintenance_assets,
    promotion_assets,
    recompute_checks,
    reference_assets,
    retention_assets,
)
from assets.runtime import CdpResource
from assets.stream import stage_holders, stream_job
from pipelines.config import Settings
from pipelines.profile.build import check_policy

EVERYTHING = "materialize_everything"
INGEST = "ingest_and_promote"
RECOMPUTE = "full_recompute"
REFERENCE = "reference_load"
MAINTENANCE = "lake_maintenance"
RETENTION = "retention"


def landing_files(settings: Settings) -> dict[str, float]:
    """Every landing file of a streaming source, with its modification time."""
    out: dict[str, float] = {}
    for source in settings.sources:
        folder = settings.paths.landing_root / source
        if folder.is_dir():
            for f in folder.glob("*.jsonl"):
                out[str(f)] = f.stat().st_mtime
    return out


def build_definitions(cdp: CdpResource) -> dg.Definitions:
    """Everything Dagster shows for one configuration (conf/ and the CDP_* environment)."""
    settings = cdp.settings()
    check_policy(settings)
    reference = reference_assets(settings)
    ingest = ingest_assets(settings)
    promote = promotion_assets(settings)
    checks = recompute_checks(settings)
    maintenance = maintenance_assets(settings)
    retention = retention_assets(settings)

    # The nightly recompute checks run on their schedule only, not with every run of the assets
    # they check (they were 35 s of a 52 s sensor run).
    nightly = dg.AssetSelection.checks(*checks)
    everything = dg.define_asset_job(
        EVERYTHING,
        selection=dg.AssetSelection.all()
        - dg.AssetSelection.assets(maintenance, retention)
        - nightly,
        description="Reference, ingestion, identity and profiles from whatever is landed.",
    )
    promote_job = dg.define_asset_job(
        INGEST,
        selection=dg.AssetSelection.assets(ingest, promote) - nightly,
        description="New landing files to bronze and silver; identity and profiles unless a "
        "blocking expectation fails.",
    )
    recompute = dg.define_asset_job(
        RECOMPUTE,
        selection=dg.AssetSelection.checks(*checks),
        description="Full identity and profile recompute, compared with the incremental state.",
    )
    reference_job = dg.define_asset_job(
        REFERENCE, selection=dg.AssetSelection.assets(reference), description="Reference loads."
    )
    maintenance_job = dg.define_asset_job(
        MAINTENANCE,
        selection=dg.AssetSelection.assets(maintenance),
        description="Compaction and VACUUM of every Delta table.",
    )

    retention_job = dg.define_asset_job(
        RETENTION,
        selection=dg.AssetSelection.assets(retention),
        description="Rows past their table's retention deleted and vacuumed (conf/retention.yaml).",
    )

    @dg.sensor(
        job=promote_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
    )
    def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        """Starts ingestion when files land that the last run request did not cover, unless a
        stream (a `stream` run or `cdp stream`) holds the stages and takes them itself."""
        holders = stage_holders(settings)
        if holders:
            # One owner per stage: the stream takes new files itself. The cursor stays, so files
            # it left behind get a run once it stops.
            held = "; ".join(f"{stage} by pid {who}" for stage, who in holders.items())
            return dg.SkipReason(f"a running stream owns ingestion and promotion ({held})")
        seen: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
        now = landing_files(settings)
        new = sorted(f for f, mtime in now.items() if seen.get(f) != mtime)
        if not new:
            return dg.SkipReason("no new landing files")
        run_key = hashlib.sha256("\n".join(f"{f}:{now[f]}" for f in new).encode()).hexdigest()
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=run_key, tags={"new_files": str(len(new))})],
            cursor=json.dumps(now),
        )

    return dg.Definitions(
        assets=[reference, ingest, promote, maintenance, retention],
        asset_checks=checks,
        jobs=[
            everything,
            promote_job,
            recompute,
            reference_job,
            maintenance_job,
            retention_job,
            stream_job(),
        ],
        sensors=[landing_sensor],
        schedules=[
            dg.ScheduleDefinition(
                job=recompute,
                cron_schedule="0 3 * * *",
                execution_timezone="UTC",
                name="nightly_full_recompute",
            ),
            dg.ScheduleDefinition(
                job=reference_job,
                cron_schedule="0 2 * * *",
                execution_timezone="UTC",
                name="daily_reference_load",
            ),
            dg.ScheduleDefinition(
                job=maintenance_job,
                cron_schedule="0 4 * * *",
                execution_timezone="UTC",
                name="nightly_lake_maintenance",
            ),
            dg.ScheduleDefinition(
                job=retention_job,
                cron_schedule="30 3 * * *",
                execution_timezone="UTC",
                name="nightly_retention",
            ),
        ],
        resources={"cdp": cdp},
        executor=dg.in_process_executor,  # one Spark session for the whole run
    )
