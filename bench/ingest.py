"""Landing -> bronze -> silver throughput on a generated operator of about a million events.

Baseline, in the same Spark session: Spark reading the same landing files as JSON and counting
them (schema inference included), the floor for "touch every line once".

The pipeline runs PASSES times over the same files, each time into a fresh lake with fresh
checkpoints, and the baseline as many times. The first pass is a cold process (`cdp run` on a new
JVM). The JIT keeps compiling for a few passes after that: on 2 cores its C2 thread spent ~7
CPU-s of the second pass and ~1 s from the fifth on (docs/benchmarks.md). So the steady state a
long-running `cdp stream` sees is the median of the last STEADY passes, and the headline figures
(`events_per_s`, `ratio`) compare steady pipeline with steady baseline. The second pass is
reported too (`second_pass_events_per_s`).
Prints one JSON line. Run: .venv/bin/python bench/ingest.py   (no arguments; ~3 min on 2 cores)
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

from pipelines.config import PROJECT_ROOT, Settings, load_settings  # noqa: E402
from pipelines.ingest import Ingestion  # noqa: E402
from pipelines.lake import Lake  # noqa: E402
from pipelines.spark import spark_session  # noqa: E402
from pipelines.synthetic import generate  # noqa: E402

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
    files = [str(settings.paths.landing_root / s) for s in settings.sources]
    baseline: list[float] = []
    passes: list[float] = []
    # Interleaved, so the baseline and the pipeline are timed at the same JIT age.
    for attempt in range(1, PASSES + 1):
        t = time.perf_counter()
        baseline_rows = spark.read.json(files).count()
        baseline.append(time.perf_counter() - t)
        step(
            f"baseline {attempt}/{PASSES}: spark.read.json(...).count() = {baseline_rows:,} rows "
            f"in {baseline[-1]:.1f} s"
        )
        passes.append(pipeline_pass(settings, root / f"pass-{attempt}", events))
        step(f"pipeline {attempt}/{PASSES}: {passes[-1]:.1f} s")

    steady = statistics.median(passes[-STEADY:])
    steady_baseline = statistics.median(baseline[-STEADY:])
    events_per_s = events / steady
    baseline_per_s = baseline_rows / steady_baseline
    cold_per_s, cold_baseline_per_s = events / passes[0], baseline_rows / baseline[0]
    print(
        json.dumps(
            {
                "events": events,
                "events_per_s": round(events_per_s),
                "pipeline_s": round(steady, 2),
                "baseline_events_per_s": round(baseline_per_s),
                "baseline_json_count_s": round(steady_baseline, 2),
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
