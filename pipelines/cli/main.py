"""`cdp`: the command line for data engineers (generate, run, stream, summary, identity)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.config import ConfigError, Settings, load_settings, package_version
from pipelines.profile.build import check_policy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.ingest.metrics import StreamMetrics
    from pipelines.lakehouse.lake import Lake
    from pipelines.ops.keys import KeyStore
    from pipelines.promotion import Promoter, Promotion

app = typer.Typer(
    help="Telecom CDP: synthetic operator, streaming ingestion into Delta bronze and silver, "
    "identity resolution.",
    no_args_is_help=True,
    add_completion=False,
)


def _group(name: str, help_text: str) -> typer.Typer:
    """A command group (`cdp <name> ...`) under the main app."""
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


identity_app = _group(
    "identity",
    "Identity: explain why an identifier belongs to its person; rebuild from all evidence.",
)
gold_app = _group(
    "profiles", "Gold profiles: show a person's profile (now or as of a time); rebuild from silver."
)
keys_app = _group("keys", "API keys: create (the key is shown once), list, revoke.")
quality_app = _group(
    "quality", "Data quality: run every suite, release a reviewed batch past the gate, build docs."
)
contracts_app = _group(
    "contracts", "Source contracts: version, steward, rows in, quarantine by reason, drift, alerts."
)
db_app = _group(
    "db", "The ops database (keys, audit, segments, events): migrate it, show its revision."
)
kafka_app = _group("kafka", "The Kafka source (source.kind: kafka): create the sources' topics.")
retention_app = _group(
    "retention", "Retention (conf/retention.yaml): each table's oldest row; delete what is past it."
)
report_app = _group(
    "report", "Reports for a regulator: a campaign push, with each recipient's consent and basis."
)
config_app = _group("config", "The configuration: its reference.")
console = Console()


def _print_version(asked: bool) -> None:
    if asked:
        console.print(f"cdp {package_version()}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Telecom CDP: synthetic operator, streaming ingestion into Delta bronze and silver,
    identity resolution, profiles, serving."""


ConfOpt = Annotated[
    Path | None, typer.Option("--conf", help="Config folder (default: ./conf or $CDP_CONF_DIR).")
]


def _settings(conf: Path | None) -> Settings:
    try:
        settings = load_settings(conf)
        check_policy(settings)
        return settings
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def generate(
    conf: ConfOpt = None,
    subscribers: Annotated[int | None, typer.Option(help="Lines at the start.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of events.")] = None,
    events_per_day: Annotated[
        float | None, typer.Option(help="Events per subscriber per day (mean).")
    ] = None,
    files_per_source: Annotated[
        int | None, typer.Option(help="Landing files per source (arrival over time).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; same seed, same operator.")] = None,
    start_date: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD.")] = None,
) -> None:
    """Write a synthetic operator's landing files, reference files and ground truth."""
    from pipelines.synthetic.operator import generate as run_generator

    settings = _settings(conf)
    overrides = {
        k: v
        for k, v in {
            "subscribers": subscribers,
            "days": days,
            "events_per_subscriber_per_day": events_per_day,
            "files_per_source": files_per_source,
            "seed": seed,
            "start_date": start_date,
        }.items()
        if v is not None
    }
    cfg = settings.generator.model_copy(update=overrides)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def step(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        summary = run_generator(
            cfg,
            settings.identity.country,
            settings.paths.landing_root,
            settings.paths.truth_root,
            progress=step,
        )
    console.print(
        f"generated {summary.persons} persons, {summary.accounts} accounts, {summary.lines} "
        f"lines, {summary.events} landing lines "
        f"({sum(summary.bad_records.values())} deliberately bad) into {summary.landing_root}"
    )
    console.print(f"ground truth (tests and benchmarks only): {summary.truth_root}")


@contextmanager
def _holding(
    settings: Settings, stage: str = "identity", owner: str | None = None
) -> Iterator[None]:
    """Run the command holding `stage`'s lock (the one the stream, `cdp run`, the rebuilds and
    Dagster share for identity and gold); a lock another process holds, for this stage or a
    source's ingestion, ends the command with the holder named and exit status 3."""
    from pipelines.lakehouse.locks import StageBusyError, stage_lock

    try:
        with stage_lock(settings.paths.checkpoint_root, stage, owner):
            yield
    except StageBusyError as exc:
        console.print(f"[red]busy:[/red] {exc}")
        raise typer.Exit(3) from None


_OWNER = {True: "cdp run", False: "cdp stream"}  # what holds the stage locks, by run kind


def _pipeline(settings: Settings, *, available_now: bool) -> None:
    """Reference loads, ingestion and promotion, all under the identity lock: a second process
    stops before it writes anything."""
    with _holding(settings, owner=_OWNER[available_now]):
        _ingest_and_promote(settings, available_now=available_now)


def _ingest_and_promote(settings: Settings, *, available_now: bool) -> None:
    from pipelines.ingest.reference import ReferenceFileError, load_reference
    from pipelines.ingest.stream import CheckpointMismatchError, Ingestion
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.spark import JavaMissingError, spark_session

    # Importing the promotion path (Great Expectations) takes ~5 s of CPU; it runs while the JVM
    # starts instead of before it, which is most of what a restart after a crash waits for.
    preload = threading.Thread(
        target=importlib.import_module, args=("pipelines.promotion",), daemon=True
    )
    preload.start()
    try:
        spark = spark_session(settings.engine)
        lake = Lake(settings.paths.lake_root, spark)
        for load in load_reference(
            lake, settings.reference, settings.paths.landing_root / "reference"
        ):
            state = "loaded" if load.changed else "unchanged"
            console.print(f"{load.table}: {load.rows} rows ({state}, version {load.version})")
    except (JavaMissingError, ReferenceFileError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    preload.join()
    from pipelines.promotion import Promoter

    promoter = Promoter(settings, lake)
    # A continuous run's log is read later, beside the tables' commit times: each line says when.
    say = console.print if available_now else _timestamped
    metrics = None if available_now else _stream_metrics(settings, say)
    ingestion = Ingestion(
        spark,
        settings,
        lake,
        on_event=say,
        downstream=_promotion_step(promoter, say, metrics),
        wake=promoter.released,
        metrics=metrics,
        owner=_OWNER[available_now],
    )
    stop = threading.Event()
    if not available_now:
        # Replace PySpark's SIGINT handler (it cancels jobs from inside a Py4J call and prints
        # tracebacks): Ctrl-C or SIGTERM asks the queries to stop after the batch in hand.
        def request_stop(signum: int, _frame: object) -> None:
            console.print(f"{signal.Signals(signum).name}: stopping the queries")
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
    try:
        ingestion.run(available_now=available_now, stop=stop)
    except CheckpointMismatchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("interrupted; committed micro-batches are kept, the next run resumes")
        raise typer.Exit(130) from None
    finally:
        # Stops the Py4J callback threads that ran the micro-batches before Python exits.
        spark.stop()
    if stop.is_set():
        console.print("stopped; every committed micro-batch is kept, the next run resumes")


def _timestamped(line: str) -> None:
    console.print(f"{datetime.now(UTC):%H:%M:%S.%f}"[:-3] + f" {line}")


def _stream_metrics(settings: Settings, say: Callable[[str], None]) -> StreamMetrics | None:
    """The stream's metrics, served on engine.metrics_port (None when it is not set)."""
    from pipelines.ingest.metrics import StreamMetrics

    port, host = settings.engine.metrics_port, settings.engine.metrics_host
    if port is None:
        return None
    metrics = StreamMetrics()
    metrics.serve(port, host)
    say(f"stream metrics on http://{host}:{port}/metrics")
    return metrics


def _promotion_step(
    promoter: Promoter, say: Callable[[str], None], metrics: StreamMetrics | None
) -> Callable[[SparkSession], None]:
    """The stream's downstream step: promote, count it, and log what it did."""

    def step(spark: SparkSession) -> None:
        promotion = promoter(spark)
        if metrics is not None:
            metrics.step(promotion.seconds)
        _print_report(promotion, say)

    return step


def _print_report(promotion: Promotion, say: Callable[[str], None] = console.print) -> None:
    """What one promotion step did, warnings in yellow."""
    for level, line in promotion.report():
        say(f"[yellow]{line}[/yellow]" if level == "warning" else line)


@identity_app.command("explain")
def identity_explain(
    id_type: Annotated[
        str | None,
        typer.Argument(help="msisdn, iccid, account_id, app_user_id, email or passport"),
    ] = None,
    value: Annotated[
        str | None, typer.Argument(help="The identifier, as any source spells it.")
    ] = None,
    example: Annotated[
        bool,
        typer.Option("--example", help="Explain a recycled number (or any line) from the lake."),
    ] = False,
    conf: ConfOpt = None,
) -> None:
    """Print the person holding an identifier, each of its identifiers with the chain of links
    (rule, source event, time) that ties it to the person, and the refused links with reasons."""
    from pipelines.config import IDENTIFIER_TYPES
    from pipelines.identity.explain import example_msisdn, explain, render
    from pipelines.lakehouse.lake import Lake

    settings = _settings(conf)
    lake = Lake(settings.paths.lake_root)
    if example:
        id_type, value = "msisdn", example_msisdn(lake)
        if value is None:
            console.print("[red]error:[/red] no identity map yet: run `cdp run` first")
            raise typer.Exit(1)
    if id_type not in IDENTIFIER_TYPES or value is None:
        console.print(
            f"[red]error:[/red] give an identifier type ({', '.join(IDENTIFIER_TYPES)}) and a "
            "value, e.g. `cdp identity explain msisdn 998901234567`, or --example"
        )
        raise typer.Exit(2)
    found = explain(lake, settings.identity, id_type, value)
    console.print(render(found, id_type, value), highlight=False, soft_wrap=True)
    if not found:
        raise typer.Exit(1)


@identity_app.command("rebuild")
def identity_rebuild(conf: ConfOpt = None) -> None:
    """Re-resolve every person from all evidence (after a rule change, or on schedule); records
    the merges and splits it causes in gold.person_merges."""
    from pipelines.identity.full import rebuild_identity
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.spark import spark_session

    settings = _settings(conf)
    with _holding(settings):
        spark = spark_session(settings.engine)
        r = rebuild_identity(spark, Lake(settings.paths.lake_root, spark), settings)
    console.print(
        f"identity rebuilt: {r.identifiers:,} identifiers in {r.persons:,} persons, "
        f"{r.merges} merges, {r.splits} splits, {r.refused} refused links in {r.seconds:.1f} s"
    )


@gold_app.command("rebuild")
def profiles_rebuild(conf: ConfOpt = None) -> None:
    """Recompute daily usage, facts and every profile from all of silver (after a change to
    conf/profile.yaml or conf/scores.yaml); writes only the profiles that change."""
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.spark import spark_session
    from pipelines.profile.stage import rebuild_gold

    settings = _settings(conf)
    with _holding(settings):
        lake = Lake(settings.paths.lake_root, spark_session(settings.engine))
        r = rebuild_gold(lake, settings, progress=console.print)
    console.print(
        f"profiles rebuilt (windows end {r.clock_day}): {r.persons:,} persons, {r.created:,} "
        f"created, {r.updated:,} updated, {r.removed:,} removed in {r.seconds:.1f} s"
    )


@gold_app.command("show")
def profiles_show(
    id_type: Annotated[
        str | None, typer.Argument(help="msisdn, email, app_user_id, account_id, ...")
    ] = None,
    value: Annotated[
        str | None, typer.Argument(help="The identifier, as any source spells it.")
    ] = None,
    example: Annotated[
        bool, typer.Option("--example", help="Show the current owner of a recycled number.")
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="ISO time: the profile as it was then (time travel)."),
    ] = None,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="With --as-of: event_time (the profile as it stood then) or commit_time (what "
            "the CDP held then).",
        ),
    ] = "event_time",
    conf: ConfOpt = None,
) -> None:
    """Print the profile of the person holding an identifier (its current tenure)."""
    import json

    from pipelines.identity.explain import example_msisdn, normalise_value
    from pipelines.lakehouse.lake import Lake
    from pipelines.profile.state import person_of, profile_as_of

    settings = _settings(conf)
    lake = Lake(settings.paths.lake_root)
    if example:
        id_type, value = "msisdn", example_msisdn(lake)
    if id_type is None or value is None:
        console.print(
            "[red]error:[/red] give an identifier type and value, e.g. "
            "`cdp profiles show msisdn 998901234567`, or --example"
        )
        raise typer.Exit(2)
    person = person_of(lake, id_type, normalise_value(id_type, value, settings.identity))
    if person is None:
        console.print(f"[red]no person holds {id_type} {value}[/red]")
        raise typer.Exit(1)
    when = datetime.fromisoformat(as_of) if as_of else None
    if when is not None and when.tzinfo is None:
        console.print("[red]error:[/red] --as-of needs a time zone, e.g. 2026-10-05T12:00:00Z")
        raise typer.Exit(2)
    if by not in ("event_time", "commit_time"):
        console.print(f"[red]error:[/red] --by {by}: use event_time or commit_time")
        raise typer.Exit(2)
    row = profile_as_of(lake, person, when, "event_time" if by == "event_time" else "commit_time")
    if row is None:
        console.print(f"[red]person {person} has no profile{' then' if when else ''}[/red]")
        raise typer.Exit(1)
    console.print_json(json.dumps(row, default=str))


def _key_store(settings: Settings) -> KeyStore:
    from pipelines.ops.keys import KeyStore

    return KeyStore(settings.database_url)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for, e.g. 'SMS campaign tool'.")],
    channel: Annotated[
        str | None, typer.Option(help="Bind the key to this channel of conf/policy.yaml.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="A source's key: it may post that source's events.")
    ] = None,
    role: Annotated[
        str | None, typer.Option(help="marketing, steward or admin (instead of a channel).")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="A steward's domain: a source (billing, crm, ...) or consent."),
    ] = None,
    expires_days: Annotated[
        float | None, typer.Option(help="The key stops working after this many days.", min=0)
    ] = None,
    conf: ConfOpt = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from pipelines.ops.keys import CONSENT

    settings = _settings(conf)
    if sum(x is not None for x in (channel, source, role)) != 1:
        console.print("[red]error:[/red] give one of --channel <name>, --source <name>, --role")
        raise typer.Exit(2)
    domains = [*settings.sources, CONSENT]
    if (role == "steward") != (domain is not None) or (domain and domain not in domains):
        console.print(
            "[red]error:[/red] a steward key names its domain, and only a steward key does: "
            f"--role steward --domain <{' | '.join(domains)}>"
        )
        raise typer.Exit(2)
    if channel is not None and channel not in settings.policy.channels:
        known = ", ".join(settings.policy.channels)
        console.print(
            f"[red]error:[/red] unknown channel {channel!r}; conf/policy.yaml has {known}"
        )
        raise typer.Exit(2)
    if source is not None and source not in settings.contracts:
        known = ", ".join(settings.sources)
        console.print(f"[red]error:[/red] unknown source {source!r}; contracts exist for {known}")
        raise typer.Exit(2)
    bound = "channel" if channel else "source" if source else None
    expires = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
    try:
        key = _key_store(settings).create(
            name, role or bound or "", channel or source or domain, expires
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(key, highlight=False, soft_wrap=True)
    console.print("store it now: it is not shown again (send it as the X-API-Key header)")


@keys_app.command("list")
def keys_list(conf: ConfOpt = None) -> None:
    """Keys with their channel or role, creation, expiry and revocation times (never the
    secrets)."""
    rows = _key_store(_settings(conf)).list()
    table = Table(title="API keys")
    columns = ("key_id", "name", "role", "channel", "created_at", "expires_at", "revoked_at")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c] or "") for c in columns))
    console.print(table)


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after cdp_).")],
    overlap_hours: Annotated[
        float, typer.Option(help="How long the old key keeps working.", min=0)
    ] = 24,
    conf: ConfOpt = None,
) -> None:
    """A new key for the same holder, printed once; the old one works for the overlap, then
    stops (every API process refuses it within seconds of that)."""
    try:
        key = _key_store(_settings(conf)).rotate(key_id, timedelta(hours=overlap_hours))
    except KeyError as exc:
        console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(1) from None
    console.print(key, highlight=False, soft_wrap=True)
    console.print(
        f"store it now: it is not shown again; {key_id} stops working in {overlap_hours:g} h"
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after cdp_).")],
    conf: ConfOpt = None,
) -> None:
    """Revoke a key: refused by every API process within seconds."""
    if not _key_store(_settings(conf)).revoke(key_id):
        console.print(f"[red]no active key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@config_app.command("reference")
def config_reference() -> None:
    """Print the reference of every conf/ file's keys (docs/config.md is this output)."""
    from pipelines.cli.confref import reference

    sys.stdout.write(reference())


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (default: newest).")] = "head",
    conf: ConfOpt = None,
) -> None:
    """Migrate the ops database (api.database_url) to a revision; stores also do this when
    they first open it, so run it to migrate ahead of a rollout."""
    from sqlalchemy import create_engine

    from pipelines.ops.store import current, upgrade

    url = _settings(conf).database_url
    engine = create_engine(url)
    before = current(engine)
    after = upgrade(engine, revision)
    where = engine.url.render_as_string(hide_password=True)
    console.print(f"ops database {where}: {before or 'empty'} -> {after}", soft_wrap=True)


@kafka_app.command("init")
def kafka_init(conf: ConfOpt = None) -> None:
    """Create each source's topic (`<topic_prefix><source>`) that does not exist yet, with the
    partitions, replication and limits of source.kafka; existing topics are left as they are."""
    from pipelines.lakehouse.kafka import KafkaConfigError, init_topics

    settings = _settings(conf)
    cfg = settings.source.kafka
    try:
        topics = init_topics(cfg, settings.sources)
    except (KafkaConfigError, TimeoutError) as exc:
        console.print(f"[red]kafka:[/red] {exc}")
        raise typer.Exit(1) from None
    except Exception as exc:  # the client's own error: a broker not reachable, no rights
        console.print(f"[red]kafka {cfg.bootstrap_servers}:[/red] {exc}")
        raise typer.Exit(1) from None
    for t in topics:
        state = "created" if t.created else "exists"
        console.print(f"{t.topic}: {state}, {t.partitions} partitions (source {t.source})")


@db_app.command("current")
def db_current(conf: ConfOpt = None) -> None:
    """Print the ops database's revision and the newest one this version knows."""
    from sqlalchemy import create_engine

    from pipelines.ops.store import current, head

    engine = create_engine(_settings(conf).database_url)
    console.print(f"at {current(engine) or 'empty (never migrated)'}; newest {head()}")


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Argument(help="What the migration changes.")],
) -> None:
    """Write a migration for what the table declarations add beyond the newest migration (for
    developers: review the file it writes in pipelines/ops/migrations/versions)."""
    import tempfile

    from pipelines.ops.store import revision

    with tempfile.TemporaryDirectory() as scratch:
        console.print(f"wrote {revision(message, Path(scratch))}")


@quality_app.command("check")
def quality_check(conf: ConfOpt = None) -> None:
    """Run every suite on the rows it covers now; exit 1 when a blocking expectation fails."""
    from expectations.runner import Quality

    settings = _settings(conf)
    quality = Quality(settings)
    failed = False
    for table in quality.suites:
        o = quality.validate(table)
        state = o.skipped or ("passed" if not o.failures else f"{len(o.failures)} failed")
        console.print(f"{table}: {o.rows:,} rows, {o.evaluated} expectations, {state}")
        for f in o.failures:
            console.print(f"  [{'red' if f.blocking else 'yellow'}]- {f}[/]")
        failed = failed or not o.passed
    console.print(f"data docs: file://{quality.docs()}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@quality_app.command("release")
def quality_release(
    table: Annotated[str, typer.Argument(help="A silver table, e.g. silver.network.")],
    conf: ConfOpt = None,
) -> None:
    """Let the rows of TABLE waiting now pass the gate (after review). It takes effect at once:
    a running `cdp stream` promotes them within a second; otherwise this command does."""
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.locks import StageBusyError, stage_lock
    from pipelines.lakehouse.spark import spark_session
    from pipelines.ops.releases import release
    from pipelines.promotion import Promoter

    settings = _settings(conf)
    lake = Lake(settings.paths.lake_root)
    try:
        version = release(lake, settings, table)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"{table}: rows up to version {version} released past the quality gate")
    try:
        with stage_lock(settings.paths.checkpoint_root, "identity"):
            spark = spark_session(settings.engine, app_name="cdp-release")
            try:
                _print_report(Promoter(settings, lake)(spark))
            finally:
                spark.stop()
    except StageBusyError:
        console.print("the running pipeline promotes them now (it watches for releases)")


@contracts_app.command("status")
def contracts_status(conf: ConfOpt = None) -> None:
    """Per source: contract versions, steward, consumers, rows in and quarantined by reason in
    the last day, unknown fields seen (drift) and open alerts."""
    from pipelines.lakehouse.lake import Lake
    from pipelines.ops.status import Alerts, contract_status

    settings = _settings(conf)
    alerts = Alerts(settings.database_url)
    for c in contract_status(Lake(settings.paths.lake_root), settings):
        versions = ", ".join(f"v{v['version']} ({v['status']})" for v in c.versions)
        reasons = ", ".join(f"{k} {v}" for k, v in c.quarantined_last_day.items()) or "none"
        console.print(
            f"[bold]{c.source}[/bold]: contract {versions}; steward {c.steward} "
            f"<{c.steward_email}>; consumers {', '.join(c.consumers)}"
        )
        console.print(
            f"  last day: {c.rows_in_last_day:,} lines in, quarantined {reasons} "
            f"(rate {c.quarantine_rate:.2%}, SLA {c.max_quarantine_rate:.2%}); "
            f"versions seen {c.versions_seen_last_day or 'none'}"
        )
        for f in c.drift:
            console.print(
                f"  drift: {f.field!r} in {', '.join(f.event_types)} since "
                f"{f.first_seen:%Y-%m-%d %H:%M} ({f.events:,} events, e.g. "
                f"{f.example_event_id})"
            )
        for a in alerts.list(c.source):
            console.print(f"  alert {a['raised_at']:%Y-%m-%d %H:%M}: {a['detail']['message']}")


@app.command()
def status(conf: ConfOpt = None) -> None:
    """Which stage is behind: per source and hop (landing or topic -> bronze -> silver -> gold),
    what waits there and how long the oldest of it has waited."""
    from pipelines.lakehouse.reader import LakeReader
    from pipelines.ops.health import pipeline_health

    settings = _settings(conf)
    health = pipeline_health(LakeReader(settings.paths.lake_root), settings)
    table = Table(title=f"What waits at each hop ({settings.paths.lake_root})")
    for col in ("hop", "source", "waiting", "oldest waited s", "detail"):
        table.add_column(col, justify="right" if col in ("waiting", "oldest waited s") else "left")
    for h in health["hops"]:
        age = "?" if h["oldest_s"] is None else f"{h['oldest_s']:,.1f}"
        table.add_row(h["hop"], h["subject"], f"{h['waiting']:,} {h['unit']}", age, h["detail"])
    console.print(table)
    behind = health["behind"]
    console.print(
        f"behind: [bold]{behind['hop']}[/bold] for {behind['subject']} (its oldest item has "
        "waited longest; every later stage can only be as fresh as it)"
        if behind
        else "nothing waits: every stage is caught up"
    )


@app.command("export-person")
def export_person(
    id_type: Annotated[
        str,
        typer.Argument(help="msisdn, iccid, account_id, app_user_id, email, passport, person_id"),
    ],
    value: Annotated[str, typer.Argument(help="The identifier, as any source spells it.")],
    at: Annotated[
        datetime | None,
        typer.Option("--at", help="The holder at this time (default now: today's holder)."),
    ] = None,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Also write the readable page here.")
    ] = None,
    conf: ConfOpt = None,
) -> None:
    """Right of access: everything held about the person holding an identifier (identifiers
    with tenures, profile, events, consent history, segments, pushes, lookups) as JSON on
    stdout; a recycled number's other owners are left out."""
    from pipelines.activation.events import EventStore
    from pipelines.activation.push import PushStore
    from pipelines.config import IDENTIFIER_TYPES
    from pipelines.identity.explain import normalise_value
    from pipelines.lakehouse.reader import LakeReader
    from pipelines.ops.audit import AuditLog
    from pipelines.ops.subject import holder_at, render_html, subject_export

    settings = _settings(conf)
    if id_type not in (*IDENTIFIER_TYPES, "person_id"):
        console.print(
            f"[red]error:[/red] {id_type!r} is not one of {IDENTIFIER_TYPES} or person_id"
        )
        raise typer.Exit(2)
    lake = LakeReader(settings.paths.lake_root)
    when = at.replace(tzinfo=at.tzinfo or UTC) if at else None
    person = value
    if id_type != "person_id":
        normal = normalise_value(id_type, value, settings.identity)
        person = holder_at(lake, id_type, normal, when) or ""
    audit = AuditLog(settings.database_url)
    try:
        doc = person and subject_export(
            lake, settings, person, audit, PushStore(EventStore(settings.database_url))
        )
    finally:
        audit.close()
    if not doc:
        console.print(f"[red]error:[/red] no person holds {id_type} {value}")
        raise typer.Exit(1)
    if html_path is not None:
        html_path.write_text(render_html(doc))
    print(json.dumps(doc, indent=2, ensure_ascii=False))


@report_app.command("campaign")
def report_campaign(
    push_id: Annotated[str, typer.Argument(help="The push (push_...), from GET .../pushes.")],
    fmt: Annotated[
        str, typer.Option("--format", help="csv (a row per recipient), json or html.")
    ] = "csv",
    conf: ConfOpt = None,
) -> None:
    """One push: segment version and rule, channel, purpose, legal basis, and per recipient
    the consent state the push used and the attributes it sent, on stdout."""
    from pipelines.activation.events import EventStore
    from pipelines.activation.push import PushStore
    from pipelines.activation.report import campaign_report, report_csv, report_html
    from pipelines.activation.segment_store import SegmentStore

    settings = _settings(conf)
    render = {"csv": report_csv, "html": report_html, "json": lambda r: json.dumps(r, indent=2)}
    if fmt not in render:
        console.print(f"[red]error:[/red] --format {fmt!r}: one of csv, json, html")
        raise typer.Exit(2)
    url = settings.database_url
    report = campaign_report(PushStore(EventStore(url)), SegmentStore(url), push_id)
    if report is None:
        console.print(f"[red]error:[/red] no push {push_id!r} in {url}")
        raise typer.Exit(1)
    print(render[fmt](report), end="" if fmt == "csv" else "\n")


@retention_app.command("status")
def retention_status_cmd(conf: ConfOpt = None) -> None:
    """Each configured table's oldest row against its retention (from file statistics)."""
    from pipelines.lakehouse.reader import LakeReader
    from pipelines.ops.retention import retention_status

    settings = _settings(conf)
    for r in retention_status(LakeReader(settings.paths.lake_root), settings):
        state = "[green]ok[/green]" if r.ok else "[red]past retention[/red]"
        oldest = f"{r.oldest:%Y-%m-%d %H:%M}" if r.oldest else "no rows"
        console.print(
            f"{r.table}: keeps {r.days:g} days of {r.column} by the {r.clock} (cut-off "
            f"{r.cutoff:%Y-%m-%d %H:%M}); oldest {oldest}: {state}"
        )


@retention_app.command("apply")
def retention_apply(conf: ConfOpt = None) -> None:
    """Delete rows past their table's retention and vacuum the files that held them, as the
    nightly Dagster asset does; tables the stream does not only append to wait for its lock."""
    from pipelines.lakehouse.lake import Lake
    from pipelines.lakehouse.locks import StageBusyError, stage_lock
    from pipelines.lakehouse.spark import spark_session
    from pipelines.ops.retention import apply_retention

    settings = _settings(conf)
    spark = spark_session(settings.engine, app_name="cdp-retention")
    lake = Lake(settings.paths.lake_root, spark)
    try:
        try:
            with stage_lock(settings.paths.checkpoint_root, "identity", "cdp retention apply"):
                report = apply_retention(lake, settings, locked=True, progress=console.print)
        except StageBusyError:
            report = apply_retention(lake, settings, locked=False, progress=console.print)
    finally:
        spark.stop()
    console.print(
        f"deleted {sum(report.deleted.values()):,} rows; skipped {report.skipped or 'none'}"
    )


@app.command()
def docs(conf: ConfOpt = None) -> None:
    """Build the data docs (every suite's expectations and latest results) and print where."""
    from expectations.runner import Quality

    quality = Quality(_settings(conf))
    for table in quality.suites:
        quality.validate(table)
    console.print(f"data docs: file://{quality.docs()}", soft_wrap=True)


@app.command()
def serve(
    conf: ConfOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (api.port).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes (api.workers); they share the snapshot's base."),
    ] = None,
) -> None:
    """Serve the API (uvicorn) on the gold snapshot; follows gold as it changes."""
    import uvicorn

    # The workers load their settings from the environment: pass them what was asked here.
    overrides = {"CDP_CONF_DIR": conf, "CDP_API_HOST": host, "CDP_API_PORT": port}
    overrides["CDP_API_WORKERS"] = workers
    os.environ.update({k: str(v) for k, v in overrides.items() if v is not None})
    settings = _settings(conf)
    console.print(
        f"serving on http://{settings.api.host}:{settings.api.port} "
        f"({settings.api.workers} worker(s)); OpenAPI at /docs, audience builder at /ui"
    )
    deliverer = None
    if settings.api.events.deliver:  # its own process: its work never holds a worker's GIL
        deliverer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli.main",
                "deliver",
                *(["--conf", str(conf)] if conf else []),
            ]
        )
    try:
        uvicorn.run(
            "api.server:app",
            host=settings.api.host,
            port=settings.api.port,
            workers=settings.api.workers,
            log_level="warning",
            access_log=False,  # no access log line per request (the metrics count them)
            # An open event stream would otherwise hold the shutdown until its client leaves.
            timeout_graceful_shutdown=settings.api.shutdown_grace_s,
        )
    finally:
        if deliverer is not None:
            deliverer.terminate()
            deliverer.wait(timeout=60)


@app.command()
def deliver(conf: ConfOpt = None) -> None:
    """Deliver events to webhook subscribers and segment pushes to channels until Ctrl-C
    (`cdp serve` starts one; one per data root works, the others wait)."""
    from pipelines.activation.delivery import serve_deliveries

    serve_deliveries(_settings(conf))


@app.command()
def run(conf: ConfOpt = None) -> None:
    """Process everything available once (bronze, silver, identity, reference), then exit."""
    settings = _settings(conf)
    started = time.monotonic()
    _pipeline(settings, available_now=True)
    console.print(f"done in {time.monotonic() - started:.1f} s")
    _print_summary(settings)


@app.command()
def stream(conf: ConfOpt = None) -> None:
    """Run ingestion and identity continuously until Ctrl-C (stops cleanly)."""
    settings = _settings(conf)
    console.print(
        f"streaming {', '.join(settings.sources)} from {settings.paths.landing_root} every "
        f"{settings.engine.trigger_interval_s} s; Ctrl-C to stop"
    )
    _pipeline(settings, available_now=False)


@app.command()
def summary(conf: ConfOpt = None) -> None:
    """Rows per table and quarantined rows per source and reason."""
    _print_summary(_settings(conf))


def _print_summary(settings: Settings) -> None:
    from pipelines.lakehouse.catalog import DRIFT, QUARANTINE, every_table
    from pipelines.lakehouse.lake import Lake

    lake = Lake(settings.paths.lake_root)
    tables = Table(title=f"Delta tables under {settings.paths.lake_root}")
    for col in ("table", "rows", "version"):
        tables.add_column(col, justify="right" if col != "table" else "left")
    for name in every_table(settings):
        dt = lake.table(name)
        if dt is not None:
            tables.add_row(name, f"{dt.count():,}", str(dt.version()))
    console.print(tables)
    if lake.exists(QUARANTINE):
        q = lake.read_arrow(QUARANTINE, ["source", "reason_code"])
        if q.num_rows:
            counts = q.group_by(["source", "reason_code"]).aggregate([([], "count_all")])
            counts = counts.sort_by([("source", "ascending"), ("count_all", "descending")])
            qt = Table(title="Quarantined per source and reason")
            for col in ("source", "reason", "rows"):
                qt.add_column(col)
            for row in counts.to_pylist():
                qt.add_row(row["source"], row["reason_code"], f"{row['count_all']:,}")
            console.print(qt)
    if lake.exists(DRIFT):
        d = lake.read_arrow(DRIFT, ["source", "field", "events"])
        if d.num_rows:
            agg = d.group_by(["source", "field"]).aggregate([("events", "sum")])
            for row in agg.to_pylist():
                console.print(
                    f"schema drift: {row['source']} sends unknown field {row['field']!r} "
                    f"({row['events_sum']:,} events), recorded in silver.schema_drift "
                    "for its steward"
                )
    _print_identity(lake)
    _print_gold(lake)


def _print_identity(lake: Lake) -> None:
    """Persons, how identifiers were linked, refused links per reason, merges and splits."""
    import pyarrow.compute as pc

    from pipelines.lakehouse.catalog import LINKS, MAP, MERGES

    if not lake.exists(MAP):
        return
    persons = len(pc.unique(lake.read_arrow(MAP, ["person_id"]).column("person_id")))
    links = lake.read_arrow(LINKS, ["status", "reason_code"])
    refused = links.filter(pc.equal(links.column("status"), "refused"))
    by_reason = refused.group_by("reason_code").aggregate([([], "count_all")]).to_pylist()
    changes = lake.read_arrow(MERGES, ["change"]) if lake.exists(MERGES) else None
    merges = pc.sum(pc.equal(changes.column("change"), "merge")).as_py() if changes else 0
    splits = pc.sum(pc.equal(changes.column("change"), "split")).as_py() if changes else 0
    console.print(
        f"identity: {persons:,} persons; {refused.num_rows:,} refused links"
        + (
            " (" + ", ".join(f"{r['reason_code']} {r['count_all']}" for r in by_reason) + ")"
            if by_reason
            else ""
        )
        + f"; {merges or 0} merges and {splits or 0} splits recorded in {MERGES}. "
        "Why is X this person? `cdp identity explain msisdn <number>`"
    )


def _print_gold(lake: Lake) -> None:
    """Profiles, their freshness, and the change events waiting in the outbox."""
    import pyarrow.compute as pc

    from pipelines.lakehouse.catalog import OUTBOX, PROFILES

    if not lake.exists(PROFILES):
        return
    p = lake.read_arrow(PROFILES, ["person_id", "last_event_ts", "churn_risk"])
    at_risk = pc.sum(pc.greater_equal(p.column("churn_risk"), 0.5)).as_py() or 0
    newest = pc.max(p.column("last_event_ts")).as_py()
    console.print(
        f"profiles: {p.num_rows:,} persons, {at_risk:,} with churn risk >= 0.5, newest event "
        f"{newest}. A profile: `cdp profiles show msisdn <number>`"
    )
    if lake.exists(OUTBOX):
        kinds = lake.read_arrow(OUTBOX, ["event_type"]).group_by("event_type")
        counts = kinds.aggregate([([], "count_all")]).sort_by("event_type").to_pylist()
        console.print(
            "outbox: "
            + ", ".join(f"{r['event_type']} {r['count_all']:,}" for r in counts)
            + f" (recorded in {OUTBOX}, delivered by the event API)"
        )


def main() -> None:
    code = 0
    try:
        app()
    except ConfigError as exc:  # pragma: no cover - typer handles most paths
        console.print(f"[red]config error:[/red] {exc}")
        code = 2
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # Every table write is committed by now. Exit without running native libraries' static
    # destructors: after a Spark run, one of them intermittently aborted the process
    # ("terminate called without an active exception"), turning a good run into exit 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
