"""The stream as a Dagster run: `cdp stream` started, watched and stopped from Dagster.

One owner per stage: while this run (or a `cdp stream` outside Dagster) holds the sources'
ingest locks and the identity lock, the landing sensor skips with the holder named instead of
starting runs that would fail "stage busy". The run logs every micro-batch and promotion step,
and reports each step's tables as materialisations, so the asset graph shows what the stream
wrote. Terminating the run in the UI stops the queries after the batch in hand (committed
micro-batches are kept; the next start resumes from the checkpoints)."""

import queue
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import dagster as dg
from dagster import OpExecutionContext  # not a string: Dagster checks the annotation

from assets.runtime import CdpResource, Runtime, key_of
from pipelines.config import Settings
from pipelines.lakehouse.catalog import MAP, OUTBOX, PROFILES
from pipelines.lakehouse.locks import StageBusyError, held_by, stage_lock

STREAM = "stream"
STOPPING = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


def stage_holders(settings: Settings) -> dict[str, str]:
    """The stages of ingestion and promotion a process holds now, with the holder."""
    root = settings.paths.checkpoint_root
    stages = [*(f"ingest.{s}" for s in settings.sources), "identity"]
    return {s: h for s in stages if (h := held_by(root, s)) is not None}


def _stream(
    rt: Runtime, owner: str, log: Any, events: queue.Queue[Any], stop: threading.Event
) -> None:
    """`cdp stream`'s work: reference loads, then ingestion with a promotion step after
    micro-batches, until `stop` is set; each step's tables go to `events`."""
    from pipelines.ingest.reference import load_reference
    from pipelines.ingest.stream import Ingestion

    settings, lake = rt.settings, rt.lake
    with stage_lock(settings.paths.checkpoint_root, "identity", owner):
        for load in load_reference(
            lake, settings.reference, settings.paths.landing_root / "reference"
        ):
            log.info(
                f"{load.table}: {load.rows} rows ({'loaded' if load.changed else 'unchanged'})"
            )
        promoter = rt.promoter()

        def step(spark: Any) -> None:
            promotion = promoter(spark)
            for level, line in promotion.report():
                (log.warning if level == "warning" else log.info)(line)
            g, r = promotion.gold, promotion.identity
            changed: dict[str, dict[str, Any]] = {
                MAP: {"mode": r.mode, "merges": r.merges, "splits": r.splits},
                PROFILES: {"created": g.created, "updated": g.updated, "removed": g.removed},
                OUTBOX: {},
            }
            for table, meta in changed.items():
                meta = rt.table_metadata(table) | meta
                events.put(dg.AssetMaterialization(asset_key=key_of(table), metadata=meta))

        Ingestion(
            rt.spark(),
            settings,
            lake,
            on_event=log.info,
            downstream=step,
            wake=promoter.released,
            owner=owner,
        ).run(available_now=False, stop=stop)


def stream_job() -> dg.JobDefinition:
    """A job of one long-running op: the stream, until the run is terminated."""

    @dg.op(
        out={},
        description="Ingest every source continuously (files or topics) and promote each "
        "micro-batch to identity and gold, as `cdp stream` does; runs until terminated.",
    )
    def run_stream(context: OpExecutionContext, cdp: CdpResource) -> Iterator[Any]:
        rt = cdp.runtime()
        owner = f"Dagster run {context.run_id} (job {STREAM})"
        events: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        failed: list[BaseException] = []

        def work() -> None:
            try:
                _stream(rt, owner, context.log, events, stop)
            except BaseException as exc:  # raised in the op below
                failed.append(exc)

        worker = threading.Thread(target=work, name="cdp-stream", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                with suppress(queue.Empty):
                    yield events.get(timeout=1.0)
                run = context.instance.get_run_by_id(context.run_id)
                if run is not None and run.status in STOPPING and not stop.is_set():
                    context.log.info("run terminated: stopping after the batch in hand")
                    stop.set()
        finally:
            stop.set()  # an interrupt of this op (termination) stops the queries as well
            worker.join()
        while not events.empty():
            yield events.get()
        if failed:
            exc = failed[0]
            if isinstance(exc, StageBusyError):
                raise dg.Failure(description=str(exc), metadata={"reason": "stage busy"})
            raise exc
        context.log.info("stopped; every committed micro-batch is kept, the next run resumes")

    @dg.job(
        name=STREAM,
        description="The stream (`cdp stream`) as a monitored long-running run: while it runs "
        "it owns ingestion and promotion (the landing sensor skips); terminate it to stop.",
        tags={"cdp/long_running": "true"},
    )
    def stream() -> None:
        run_stream()

    return stream
