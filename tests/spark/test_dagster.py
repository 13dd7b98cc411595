"""The Dagster code location: it loads and resolves; the whole graph materialises on a fresh lake
with every check passing; a source breaking a blocking expectation is held alone (named, its
steward alerted) until it is released."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets.definitions import (
    EVERYTHING,
    INGEST,
    MAINTENANCE,
    RECOMPUTE,
    REFERENCE,
    RETENTION,
    build_definitions,
)
from assets.runtime import CdpResource, key_of
from assets.stream import STREAM
from pipelines.config import PROJECT_ROOT
from pipelines.lakehouse.catalog import MAP, PROFILES
from pipelines.lakehouse.lake import Lake
from pipelines.synthetic.operator import generate
from tests.conftest import settings_for
from tests.e2e.runs import CDP, ONE_FILE_PER_BATCH, cdp_env, conf_with, snapshot

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def small(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small operator, landed, and the whole graph materialised once into a fresh lake."""
    root = tmp_path_factory.mktemp("dagster")
    settings = settings_for(root)
    gen = settings.generator.model_copy(
        update={"subscribers": 80, "days": 4, "files_per_source": 2}
    )
    generate(gen, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root)
    # the same landing files, kept aside for `cdp run` to compare with
    shutil.copytree(settings.paths.landing_root, root / "cli" / "landing")
    defs = build_definitions(
        CdpResource(conf_dir=str(PROJECT_ROOT / "conf"), env={"CDP_DATA_ROOT": str(root)})
    )
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(EVERYTHING).execute_in_process(instance=instance)
    return {
        "settings": settings,
        "defs": defs,
        "instance": instance,
        "first": result,
        "cli_root": root / "cli",
    }


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{'/'.join(e.asset_key.path)}:{e.check_name}": e
        for e in result.get_asset_check_evaluations()
    }


def test_definitions_resolve_every_job_sensor_and_schedule(small: dict[str, Any]) -> None:
    defs: dg.Definitions = small["defs"]
    for job in (EVERYTHING, INGEST, RECOMPUTE, REFERENCE, MAINTENANCE, RETENTION, STREAM):
        assert defs.resolve_job_def(job).name == job
    assert {s.name for s in defs.sensors} == {"landing_sensor"}
    assert {s.name for s in defs.schedules} == {
        "nightly_full_recompute",
        "daily_reference_load",
        "nightly_lake_maintenance",
        "nightly_retention",
    }
    keys = {"/".join(k.path) for k in defs.resolve_asset_graph().get_all_asset_keys()}
    settings = small["settings"]
    for s in settings.sources:
        assert f"bronze/{s}" in keys and f"silver/{settings.contract(s).domain}" in keys
    assert {
        "silver/quarantine",
        "silver/identity_edges",
        "gold/identity_map",
        "gold/person_merges",
        "silver/daily_usage",
        "gold/profiles",
        "ref/tariffs",
        "ops/outbox",
    } <= keys


def test_runs_on_new_files_leave_the_nightly_recompute_to_its_schedule(
    small: dict[str, Any],
) -> None:
    """The sensor's job and the everything job run each asset's own checks, not the two full
    recomputes (35 s of a 52 s sensor run before); those belong to the nightly job."""
    defs: dg.Definitions = small["defs"]

    def checks_of(job: str) -> set[str]:
        graph = defs.resolve_job_def(job).asset_layer.asset_graph
        return {k.name for k in graph.asset_check_keys}

    for job in (INGEST, EVERYTHING):
        assert "full_recompute_matches" not in checks_of(job), job
        assert {"expectations", "quarantine_rate_within_sla"} <= checks_of(job), job
    assert checks_of(RECOMPUTE) == {"full_recompute_matches"}


def test_every_check_says_what_it_checks(small: dict[str, Any]) -> None:
    defs: dg.Definitions = small["defs"]
    specs = [spec for a in [*defs.assets, *defs.asset_checks] for spec in a.check_specs]
    assert len(specs) > 20
    missing = ["/".join(s.asset_key.path) + ":" + s.name for s in specs if not s.description]
    assert not missing, missing


def test_landing_sensor_requests_a_run_for_new_files_only(small: dict[str, Any]) -> None:
    defs: dg.Definitions = small["defs"]
    sensor = defs.resolve_sensor_def("landing_sensor")
    first = sensor.evaluate_tick(dg.build_sensor_context(instance=small["instance"]))
    assert len(first.run_requests) == 1 and first.cursor
    again = sensor.evaluate_tick(
        dg.build_sensor_context(instance=small["instance"], cursor=first.cursor)
    )
    assert not again.run_requests and again.skip_message == "no new landing files"


def test_whole_graph_materialises_on_a_fresh_lake_with_every_check_passing(
    small: dict[str, Any],
) -> None:
    result: dg.ExecuteInProcessResult = small["first"]
    assert result.success
    lake = Lake(small["settings"].paths.lake_root)
    materialised = {"/".join(e.asset_key.path) for e in result.get_asset_materialization_events()}
    for table in (
        "bronze.network",
        "silver.network",
        "silver.quarantine",
        "gold.identity_map",
        "gold.profiles",
        "ops.outbox",
        "ref.tariffs",
    ):
        assert lake.exists(table), table
        assert "/".join(table.split(".")) in materialised
    checks = _checks(result)
    assert "silver/network:expectations" in checks
    assert "silver/quarantine:quarantine_rate_within_sla" in checks
    assert "gold/profiles:expectations" in checks
    every_table = {"/".join(e.asset_key.path) for e in result.get_asset_materialization_events()}
    for table in every_table:
        assert f"{table}:expectations" in checks, f"{table} has no expectation suite"
    persons = checks["gold/profiles:identity_map_persons_have_profiles"]
    assert persons.passed and persons.metadata["rows"].value > 0
    # Freshness is judged against the data clock, the newest event of any source (the
    # operator's events are days old): each table's lag is how far its newest event is behind
    # that, and gold, caught up with silver, passes. A sparse source of 80 subscribers may lag
    # the busiest by more than its SLA (a warning); every other check passes.
    freshness = {k: e for k, e in checks.items() if k.endswith(":freshness_within_sla")}
    newest = {
        t: lake.read_polars(t, [c]).get_column(c).max()
        for t, c in [(f"silver.{s}", "event_ts") for s in ("network", "app", "billing", "crm")]
        + [(PROFILES, "last_event_ts")]
    }
    clock = max(v for t, v in newest.items() if t.startswith("silver."))
    for table, seen in newest.items():
        lag = freshness["/".join(table.split(".")) + ":freshness_within_sla"]
        expected = round((clock - seen).total_seconds() / 60, 1)
        assert lag.metadata["lag_minutes"].value == expected, table
    assert checks["gold/profiles:freshness_within_sla"].passed
    failed = {k: e.description for k, e in checks.items() if not e.passed and k not in freshness}
    assert not failed, failed
    profiles = result.asset_materializations_for_node("promote")
    meta = next(m.metadata for m in profiles if m.asset_key == key_of(PROFILES))
    assert meta["rows"].value == lake.table(PROFILES).count() > 0  # type: ignore[union-attr]
    assert meta["delta_version"].value == lake.version(PROFILES)
    # the nightly full recompute is its own job, not part of every run
    assert not any(k.endswith(":full_recompute_matches") for k in checks)
    nightly = (
        small["defs"].resolve_job_def(RECOMPUTE).execute_in_process(instance=small["instance"])
    )
    recompute = _checks(nightly)
    assert recompute.keys() == {
        "gold/profiles:full_recompute_matches",
        "gold/identity_map:full_recompute_matches",
    }
    assert all(e.passed for e in recompute.values())


def test_dagster_and_the_cli_give_the_same_lake_from_the_same_landing(
    small: dict[str, Any], tmp_path: Path
) -> None:
    """One promotion path: `cdp run` on a copy of the landing files Dagster materialised gives
    the same bronze, silver, quarantine, daily usage, profiles and identity map."""
    cli_root: Path = small["cli_root"]
    conf = conf_with(tmp_path, spark_master=ONE_FILE_PER_BATCH["spark_master"], driver_memory="2g")
    run = subprocess.run(
        [*CDP, "run"], env=cdp_env(conf, cli_root), capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    dagster_root = small["settings"].data_root
    dagster, cli = snapshot(dagster_root), snapshot(cli_root)
    assert dagster.keys() == cli.keys()
    for table in dagster:
        assert dagster[table] == cli[table], table
    assert sum(dagster["profiles"].values()) > 50

    def identity_map(root: Path) -> list[str]:
        rows = Lake(root / "lake").read_arrow(MAP).to_pylist()
        # When and in which batch, not what: a region is named after its first-ingested value,
        # so the order in which two runs commit their sources names it (resolve.regions_of).
        bookkeeping = ("first_seen", "evidence_version", "region")
        return sorted(repr([(k, v) for k, v in r.items() if k not in bookkeeping]) for r in rows)

    assert identity_map(dagster_root) == identity_map(cli_root)


def test_a_busy_stage_fails_the_run_with_a_clear_message(small: dict[str, Any]) -> None:
    from pipelines.lakehouse.locks import stage_lock

    settings = small["settings"]
    with stage_lock(settings.paths.checkpoint_root, "ingest.network"):  # e.g. `cdp stream`
        result = (
            small["defs"]
            .resolve_job_def(INGEST)
            .execute_in_process(instance=small["instance"], raise_on_error=False)
        )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = str(failure.event_specific_data.error)  # type: ignore[union-attr]
    assert "stage ingest.network is already running in another process" in message


def _land_payment(
    settings: Any, lake: Lake, nth: int, event_id: str, balance: str, name: str
) -> dict[str, Any]:
    """A billing payment for the `nth` one-line person, a minute after billing's newest event,
    landed as its own file; that person's profile as it was."""
    import polars as pl

    profile = (
        lake.read_polars(PROFILES)
        .filter(pl.col("msisdns").list.len() == 1)
        .sort("person_id")
        .to_dicts()[nth]
    )
    newest = lake.read_polars("silver.billing").select(pl.col("event_ts").max()).item()
    payment = {
        "event_id": event_id,
        "source": "billing",
        "event_type": "payment",
        "event_ts": (newest + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "schema_version": 1,
        "msisdn": profile["primary_msisdn"],
        "account_id": profile["account_id"],
        "amount": "1000.00",
        "currency": "UZS",
        "balance_after": balance,
    }
    (settings.paths.landing_root / "billing" / f"{name}.jsonl").write_text(
        json.dumps(payment) + "\n"
    )
    return profile


def test_a_broken_source_is_held_alone_and_its_release_takes_effect_at_once(
    small: dict[str, Any],
) -> None:
    """The network feed breaks a blocking expectation while billing sends a good payment: the
    payment reaches gold, network's rows wait in silver, its steward is alerted and contract
    status says why; `cdp quality release` promotes them at once, without a new batch."""
    import polars as pl

    from pipelines.ops.status import Alerts, contract_status
    from pipelines.profile.state import silver_ranges

    settings = small["settings"]
    lake = Lake(settings.paths.lake_root)

    # the network feed sends negative byte counts for half its data sessions
    folder: Path = settings.paths.landing_root / "network"
    sessions = [
        json.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if '"data_session_end"' in line and line.startswith('{"event_id":"net-')
    ][:200]
    assert len(sessions) == 200
    lines = []
    for i, event in enumerate(sessions):
        event["event_id"] = f"net-broken-{i:05d}"
        if i % 2 == 0:
            event["bytes_down"] = -abs(int(event["bytes_down"])) - 1
        lines.append(json.dumps(event))
    (folder / "network-broken.jsonl").write_text("\n".join(lines) + "\n")
    # ... while billing sends a good payment for a one-line person
    profile = _land_payment(settings, lake, 0, "bil-held-test-1", "12345.67", "billing-payment")

    result = (
        small["defs"]
        .resolve_job_def(EVERYTHING)
        .execute_in_process(instance=small["instance"], raise_on_error=False)
    )
    check = _checks(result)["silver/network:expectations"]
    assert not check.passed
    assert "expect_column_values_to_be_between(bytes_down)" in (check.description or "")
    assert "100 of 200 rows" in (check.description or "")
    after = lake.read_polars(PROFILES).filter(pl.col("person_id") == profile["person_id"])
    assert str(after["balance_total"][0]) == "12345.67"  # billing went on to gold
    done, current = silver_ranges(lake, settings)["network"]
    assert done is not None and done < current  # network waits in silver
    status = {c.source: c for c in contract_status(lake, settings)}
    assert status["network"].held and not status["billing"].held
    assert any("bytes_down" in why for why in status["network"].held_because)
    alerts = Alerts(settings.database_url).list("network")
    assert [a["kind"] for a in alerts if a["kind"] == "gate_held"] == ["gate_held"]
    assert "cdp quality release silver.network" in next(
        a["detail"]["message"] for a in alerts if a["kind"] == "gate_held"
    )

    released = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "quality", "release", "silver.network"],
        env={**os.environ, "CDP_DATA_ROOT": str(settings.data_root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert released.returncode == 0, released.stdout + released.stderr
    done, current = silver_ranges(lake, settings)["network"]
    assert done == current  # promoted by the release itself, no new batch needed
    assert not {c.source: c for c in contract_status(lake, settings)}["network"].held


def test_rows_committed_while_the_gate_runs_wait_for_the_next_gate(small: dict[str, Any]) -> None:
    """The gate pins the silver versions it judged; identity and gold read no further, so a batch
    committed in between is judged by the next gate instead of slipping through."""
    import polars as pl

    from expectations.gate import promotion_gate
    from expectations.runner import Quality
    from pipelines.ops.health import pipeline_health
    from pipelines.ops.status import sla_status
    from pipelines.profile.stage import refresh_gold
    from pipelines.profile.state import silver_ranges

    settings = small["settings"]
    lake = Lake(settings.paths.lake_root)
    gate = promotion_gate(Quality(settings, lake))
    late = lake.read_arrow("silver.network").slice(0, 1)
    late = late.set_column(
        late.schema.get_field_index("event_id"), "event_id", pl.Series(["net-late-1"]).to_arrow()
    )
    lake.append_once("silver.network", late, {}, stage="test")  # a batch lands meanwhile
    refresh_gold(lake, settings, until=gate.until)
    done, current = silver_ranges(lake, settings)["network"]
    assert done == gate.until["silver.network"] < current
    again = promotion_gate(Quality(settings, lake))
    assert next(o for o in again.outcomes if o.table == "silver.network").rows >= 1
    # The health view counts the row as waiting for gold, aged from its ingestion, and the
    # end-to-end lag SLA is that same wait.
    now = datetime.now(UTC)
    hops = pipeline_health(lake, settings, now=now)["hops"]
    waiting = next(h for h in hops if h["hop"] == "silver -> gold" and h["subject"] == "network")
    assert waiting["waiting"] == 1
    ingested = late.column("_ingest_ts")[0].as_py()
    assert waiting["oldest_s"] == round((now - ingested).total_seconds(), 1)
    lag = next(r for r in sla_status(lake, settings, now=now) if r.sla == "end_to_end_lag")
    assert lag.measured == max(h["oldest_s"] for h in hops if h["hop"] == "silver -> gold")


def test_nightly_maintenance_compacts_every_table_and_changes_no_row(small: dict[str, Any]) -> None:
    lake = Lake(small["settings"].paths.lake_root)
    tables = lake.tables()
    assert len(tables) >= 15
    before = {t: (lake.version(t), lake.file_count(t), lake.read_arrow(t).num_rows) for t in tables}
    result = (
        small["defs"].resolve_job_def(MAINTENANCE).execute_in_process(instance=small["instance"])
    )
    assert result.success
    meta = result.asset_materializations_for_node("ops__lake_maintenance")[0].metadata
    assert meta["tables"].value == len(tables) and meta["skipped"].value == "none"
    compacted = 0
    for t, (version, files, rows) in before.items():
        assert lake.read_arrow(t).num_rows == rows, t
        assert lake.file_count(t) <= files, t
        if files > 1:
            compacted += 1
            assert lake.file_count(t) == 1, t
            current = lake.version(t)
            assert current is not None and version is not None
            assert lake.appended(t, version, current).num_rows == 0, t  # nothing new to read
    assert compacted >= 5


def test_a_source_over_its_quarantine_rate_is_held_alone_and_the_run_succeeds(
    small: dict[str, Any],
) -> None:
    """crm sends a file that is mostly not JSON: its quarantine rate breaks the SLA (5%). The
    run succeeds (nothing failed: a source was held on purpose), the health check fails naming
    crm, crm's rows wait in silver with a gate alert for its steward, and a billing payment
    sent at the same time reaches gold."""
    import polars as pl

    from pipelines.ops.status import Alerts, contract_status
    from pipelines.profile.state import silver_ranges

    settings = small["settings"]
    lake = Lake(settings.paths.lake_root)
    good = [
        line
        for f in sorted((settings.paths.landing_root / "crm").glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if line.startswith('{"event_id"')
    ][:5]
    assert len(good) == 5
    landed = lake.read_polars("silver.crm").height
    broken = [f'{{"event_id": "crm-broken-{i}", "oops' for i in range(landed)]
    resent = [line.replace('"event_id":"', '"event_id":"crm-again-', 1) for line in good]
    (settings.paths.landing_root / "crm" / "crm-broken.jsonl").write_text(
        "\n".join(broken + resent) + "\n"
    )
    profile = _land_payment(settings, lake, 1, "bil-crm-held-1", "777.00", "billing-crm-held")
    result = small["defs"].resolve_job_def(INGEST).execute_in_process(instance=small["instance"])
    assert result.success
    health = _checks(result)["silver/quarantine:quarantine_rate_within_sla"]
    assert not health.passed and "crm" in (health.description or "")
    after = lake.read_polars(PROFILES).filter(pl.col("person_id") == profile["person_id"])
    assert str(after["balance_total"][0]) == "777.00"  # billing went on to gold
    done, current = silver_ranges(lake, settings)["crm"]
    assert done is not None and done < current  # crm's good lines wait in silver
    assert {c.source: c for c in contract_status(lake, settings)}["crm"].held
    assert "gate_held" in {a["kind"] for a in Alerts(settings.database_url).list("crm")}


def test_selecting_one_sources_table_ingests_that_source_alone(small: dict[str, Any]) -> None:
    """Materialising only silver/billing in Dagster runs billing's ingestion only: its new
    payment lands, network's new file waits for a run that selects it, and only the selected
    table and its checks are reported."""
    import polars as pl

    settings = small["settings"]
    lake = Lake(settings.paths.lake_root)
    _land_payment(settings, lake, 2, "bil-subset-1", "555.00", "billing-subset")
    folder: Path = settings.paths.landing_root / "network"
    line = next(
        line
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text().splitlines()
        if line.startswith('{"event_id":"net-')
    )
    (folder / "network-subset.jsonl").write_text(
        line.replace('"event_id":"net-', '"event_id":"net-subset-', 1) + "\n"
    )
    network_before = lake.version("bronze.network")

    silver_billing = key_of("silver.billing")
    result = (
        small["defs"]
        .resolve_implicit_global_asset_job_def()
        .execute_in_process(instance=small["instance"], asset_selection=[silver_billing])
    )

    assert result.success
    assert {e.asset_key for e in result.get_asset_materialization_events()} == {silver_billing}
    assert {c.asset_key for c in result.get_asset_check_evaluations()} == {silver_billing}
    ids = lake.read_polars("silver.billing").get_column("event_id")
    assert "bil-subset-1" in ids.to_list()
    assert lake.version("bronze.network") == network_before  # network was not run
    network = lake.read_polars("bronze.network").filter(
        pl.col("raw_line").str.contains("net-subset-")
    )
    assert network.height == 0


def test_the_stream_runs_in_dagster_owns_its_stages_and_stops_when_terminated(
    small: dict[str, Any],
) -> None:
    """The `stream` job ingests and promotes a payment landed while it runs; meanwhile the
    landing sensor skips, naming the run, instead of starting runs that fail "stage busy";
    terminating the run stops the stream cleanly and frees the stages."""
    import threading
    import time

    import polars as pl

    from pipelines.lakehouse.locks import held_by

    settings, instance = small["settings"], small["instance"]
    defs: dg.Definitions = small["defs"]
    lake = Lake(settings.paths.lake_root)
    results: list[dg.ExecuteInProcessResult] = []
    runner = threading.Thread(
        target=lambda: results.append(
            defs.resolve_job_def(STREAM).execute_in_process(instance=instance, raise_on_error=False)
        )
    )
    runner.start()
    try:
        deadline = time.monotonic() + 120
        run = None
        while run is None and time.monotonic() < deadline:
            started = instance.get_runs(dg.RunsFilter(job_name=STREAM))
            run = started[0] if started else None
            time.sleep(0.5)
        assert run is not None, "the stream run did not start"
        while held_by(settings.paths.checkpoint_root, "ingest.billing") is None:
            assert runner.is_alive() and time.monotonic() < deadline, "the stream took no lock"
            time.sleep(0.5)
        profile = _land_payment(settings, lake, 3, "bil-stream-1", "777.00", "billing-stream")

        def balance() -> str:
            row = lake.read_polars(PROFILES).filter(pl.col("person_id") == profile["person_id"])
            return str(row["balance_total"][0])

        deadline = time.monotonic() + 300
        while balance() != "777.00":
            assert runner.is_alive() and time.monotonic() < deadline, "the payment never showed"
            time.sleep(1)

        tick = defs.resolve_sensor_def("landing_sensor").evaluate_tick(
            dg.build_sensor_context(instance=instance)
        )
        assert not tick.run_requests
        assert f"Dagster run {run.run_id} (job stream)" in (tick.skip_message or "")
    finally:
        for r in instance.get_runs(dg.RunsFilter(job_name=STREAM)):
            instance.report_run_canceling(r)
        runner.join(timeout=180)
    assert not runner.is_alive(), "the stream did not stop after termination"
    (result,) = results
    assert result.success
    assert key_of(PROFILES) in {e.asset_key for e in result.get_asset_materialization_events()}
    for stage in ("ingest.billing", "identity"):
        assert held_by(settings.paths.checkpoint_root, stage) is None


def test_the_retention_asset_leaves_no_row_past_its_tables_retention(
    small: dict[str, Any], tmp_path: Path
) -> None:
    """Network events kept 2 days (of the operator's 4) by the data clock, raw network lines
    ~9 s by the wall clock, audit records 30 days, files vacuumed at once: afterwards no row
    past its retention is left in the tables, every newer row is untouched, the status shows
    each table within its retention, and the stream's stages read on across the deletes. A
    vacuum waits while a table's reader is behind (its unread versions name the rewritten
    files), and happens on the next run once it has caught up."""
    import polars as pl
    from sqlalchemy import func, select

    from pipelines.ops.audit import audit_records
    from pipelines.ops.releases import release
    from pipelines.ops.status import sla_status
    from pipelines.ops.store import ops_engine

    settings, instance = small["settings"], small["instance"]
    rules = {
        "tables": {"silver.network": 2, "bronze.network": 0.0001},
        "audit_days": 30,
        "vacuum_hours": 0,
    }
    cdp = _with_conf(tmp_path, settings, "retention.yaml", rules)
    defs = build_definitions(cdp)
    lake = Lake(settings.paths.lake_root)
    release(lake, settings, "silver.network")  # earlier tests left broken rows held at the gate
    assert defs.resolve_job_def(INGEST).execute_in_process(instance=instance).success
    # one network row waits for gold: its reader (the promotion) is behind when retention runs
    _append_silver_copy(lake, "silver.network", "net-retention-waiting")

    events = lake.read_arrow("silver.network", ["event_id", "event_ts"]).to_pylist()
    newest = max(
        lake.read_polars(f"silver.{settings.contract(s).domain}", ["event_ts"])["event_ts"].max()
        for s in settings.sources
    )
    cutoff = newest - timedelta(days=2)  # the data clock: the newest event of any source
    kept = {e["event_id"] for e in events if e["event_ts"] >= cutoff}
    assert 0 < len(kept) < len(events) and "net-retention-waiting" in kept
    now = datetime.now(UTC)
    engine = ops_engine(settings.database_url)
    _audit_records_aged(engine, now, (45, 5))
    retention_settings = cdp.settings()
    before = {r.subject: r.ok for r in sla_status(lake, retention_settings) if r.sla == "retention"}
    assert before == {"silver.network": False, "bronze.network": False}

    first = defs.resolve_job_def(RETENTION).execute_in_process(instance=instance)  # or raises

    (done,) = first.get_asset_materialization_events()
    meta = done.materialization.metadata
    assert meta["vacuum_waits_for_readers"].value == "silver.network"  # gold is behind
    after = lake.read_arrow("silver.network", ["event_id", "event_ts"]).to_pylist()
    assert {e["event_id"] for e in after} == kept
    assert lake.rows("bronze.network") == 0  # every raw line was ingested well before
    with engine.begin() as db:
        mine = audit_records.c.key_id == "k-retention"
        ages = db.execute(select(func.count()).select_from(audit_records).where(mine)).scalar_one()
    assert ages == 1  # the 45-day-old record went, the 5-day-old one stays
    status = {r.subject: r for r in sla_status(lake, retention_settings) if r.sla == "retention"}
    assert all(r.ok for r in status.values()), status

    # The stages read on across the delete (the waiting row reaches gold), and the next run's
    # vacuum removes every file that held a deleted row.
    profile = _land_payment(settings, lake, 4, "bil-after-retention", "4321.00", "billing-late")
    assert defs.resolve_job_def(INGEST).execute_in_process(instance=instance).success
    row = lake.read_polars(PROFILES).filter(pl.col("person_id") == profile["person_id"])
    assert str(row["balance_total"][0]) == "4321.00"
    again = defs.resolve_job_def(RETENTION).execute_in_process(instance=instance)
    (done,) = again.get_asset_materialization_events()
    assert done.materialization.metadata["vacuum_waits_for_readers"].value == "none"
    root = settings.paths.lake_root  # no file under the tables holds a deleted row
    assert not _files_with_older(root / "silver" / "network", "event_ts", cutoff)
    raw_limit = now - timedelta(seconds=9)
    assert not _files_with_older(root / "bronze" / "network", "ingest_ts", raw_limit)


def _with_conf(tmp_path: Path, settings: Any, name: str, content: dict[str, Any]) -> CdpResource:
    """The `cdp` resource on a copy of the project's conf with file `name` replaced."""
    import yaml

    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / name).write_text(yaml.safe_dump(content))
    return CdpResource(conf_dir=str(conf), env={"CDP_DATA_ROOT": str(settings.data_root)})


def _append_silver_copy(lake: Lake, table: str, event_id: str) -> None:
    """A copy of the table's newest good row (earlier tests left broken ones: negative byte
    counts) under `event_id`, appended as a batch of its own."""
    import polars as pl

    good = pl.col("bytes_down").fill_null(0) >= 0
    newest = lake.read_polars(table).filter(good).sort("event_ts").tail(1)
    row = newest.with_columns(pl.lit(event_id).alias("event_id")).to_arrow()
    lake.append_once(table, row.cast(lake.arrow_schema(table)), {}, stage="test")


def _audit_records_aged(engine: Any, now: datetime, ages_days: tuple[int, ...]) -> None:
    """Lookup audit records made `ages_days` ago, under the key id `k-retention`."""
    from sqlalchemy import insert

    from pipelines.ops.audit import audit_records

    with engine.begin() as db:
        for days in ages_days:
            db.execute(
                insert(audit_records).values(
                    at=now - timedelta(days=days),
                    kind="lookup",
                    key_id="k-retention",
                    channel="mobile_app",
                    person_id=None,
                    disclosure_id="d-retention",
                )
            )


def _files_with_older(table: Path, column: str, limit: datetime) -> list[str]:
    """Parquet files under a table's folder (data and change files) holding a `column` value
    before `limit`."""
    return [
        f.name
        for f in table.rglob("*.parquet")
        if "_delta_log" not in f.parts
        and any(v < limit for v in pq.read_table(f, columns=[column])[column].to_pylist())
    ]
