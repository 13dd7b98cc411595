"""Landing -> bronze -> silver throughput on a generated operator of about a million events.

Baseline, in the same Spark session: the plain job a data engineer would write instead of this
project, `spark.read.json(landing/<source>).write.format("delta").save(path)` for each source
(schema inference, parse, Delta write with statistics), on the same files.

The pipeline runs PASSES times over the same files, each time into a fresh lake with fresh
checkpoints, and the baseline as many times, interleaved. The first pass is a cold process (`cdp
run` on a new JVM). The JIT keeps compiling for a few passes after that (docs/benchmarks.md), so
the steady state a long-running `cdp stream` sees is the median of the last STEADY passes, and
the headline figures (`events_per_s`, `ratio`) compare steady pipeline with steady baseline.
Prints one JSON line. Run: .venv/bin/python bench/ingest.py   (no arguments; ~5 min on 2 cores)
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import SparkSession  # noqa: E402

from pipelines.config import PROJECT_ROOT, Settings, load_settings  # noqa: E402
from pipelines.ingest.stream import Ingestion  # noqa: E402
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402
from pipelines.synthetic.operator import generate  # noqa: E402

SUBSCRIBERS, DAYS, FILES = 8500, 14, 8  # ~1.0M landing lines
PASSES, STEADY = 10, 3


def step(msg: str) -> None:
    print(f"[bench/ingest] {msg}", file=sys.stderr, flush=True)


def pipeline_pass(settings: Settings, root: Path, events: int) -> float:
    """One landing -> bronze -> silver run of every source into a fresh lake; its seconds."""
    paths = settings.paths.model_copy(
        update={"lake_root": root / "lake", "checkpoint_root": root / "checkpoints"}
    )
    lake = Lake(paths.lake_root)
    t = time.perf_counter()
    Ingestion(
        spark_session(settings.engine),
        settings.model_copy(update={"paths": paths}),
        lake,
        on_event=step,
    ).run()
    seconds = time.perf_counter() - t
    landed = [f"silver.{s}" for s in settings.sources] + ["silver.quarantine"]
    rows = sum(lake.read_polars(table, ["event_id"]).height for table in landed)
    assert rows == events, f"{rows:,} rows in silver and quarantine, expected {events:,}"
    shutil.rmtree(root)
    return seconds


def plain_job(spark: SparkSession, settings: Settings, out: Path) -> float:
    """The baseline: each source's landing files read as JSON and written as a Delta table."""
    t = time.perf_counter()
    for source in settings.sources:
        landing = settings.paths.landing_root / source
        spark.read.json(str(landing)).write.format("delta").save(str(out / source))
    seconds = time.perf_counter() - t
    shutil.rmtree(out)
    return seconds


def generate_operator(root: Path) -> tuple[Settings, int]:
    """The bench's operator (~1M landing lines) generated under `root`; its settings and lines."""
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    cfg = settings.generator.model_copy(
        update={"subscribers": SUBSCRIBERS, "days": DAYS, "files_per_source": FILES}
    )
    step(f"generating {SUBSCRIBERS} subscribers x {DAYS} days into {root}")
    t = time.perf_counter()
    summary = generate(
        cfg, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root
    )
    step(f"generated {summary.events:,} lines in {time.perf_counter() - t:.1f} s")
    return settings, summary.events


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-ingest-"))
    settings, events = generate_operator(root)
    spark = spark_session(settings.engine, app_name="bench-ingest")
    spark.range(1000).count()  # start the executors before timing anything
    baseline: list[float] = []
    passes: list[float] = []
    # Interleaved, so the baseline and the pipeline are timed at the same JIT age.
    for attempt in range(1, PASSES + 1):
        baseline.append(plain_job(spark, settings, root / f"plain-{attempt}"))
        step(f"baseline {attempt}/{PASSES}: plain JSON -> Delta job in {baseline[-1]:.1f} s")
        passes.append(pipeline_pass(settings, root / f"pass-{attempt}", events))
        step(f"pipeline {attempt}/{PASSES}: {passes[-1]:.1f} s")

    steady = statistics.median(passes[-STEADY:])
    steady_baseline = statistics.median(baseline[-STEADY:])
    events_per_s = events / steady
    baseline_per_s = events / steady_baseline
    cold_per_s, cold_baseline_per_s = events / passes[0], events / baseline[0]
    print(
        json.dumps(
            {
                "events": events,
                "events_per_s": round(events_per_s),
                "pipeline_s": round(steady, 2),
                "baseline_events_per_s": round(baseline_per_s),
                "baseline_s": round(steady_baseline, 2),
                "ratio": round(events_per_s / baseline_per_s, 3),
                "pass_s": [round(p, 2) for p in passes],
                "baseline_pass_s": [round(b, 2) for b in baseline],
                "second_pass_events_per_s": round(events / passes[1]),
                "cold_events_per_s": round(cold_per_s),
                "cold_ratio": round(cold_per_s / cold_baseline_per_s, 3),
                "cores": spark.sparkContext.defaultParallelism,
            }
        )
    )


if __name__ == "__main__":
    main()
