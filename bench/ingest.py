"""Landing -> bronze -> silver throughput on a generated operator of about a million events.

Baseline, in the same Spark session: Spark reading the same landing files as JSON and counting
them (schema inference included), the floor for "touch every line once".

The pipeline runs twice over the same files, each time into a fresh lake with fresh checkpoints:
the first pass is a cold process (`cdp run` on a new JVM: code generation and JIT included), the
second is the steady state a long-running `cdp stream` sees. The baseline is timed the same way.
Prints one JSON line. Run: .venv/bin/python bench/ingest.py   (no arguments; ~2 min on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.ingest import Ingestion  # noqa: E402
from pipelines.lake import Lake  # noqa: E402
from pipelines.spark import spark_session  # noqa: E402
from pipelines.synthetic import generate  # noqa: E402

SUBSCRIBERS, DAYS, FILES = 8500, 14, 8  # ~1.0M landing lines


def step(msg: str) -> None:
    print(f"[bench/ingest] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-ingest-"))
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

    spark = spark_session(settings.engine, app_name="bench-ingest")
    spark.range(1000).count()  # start the executors before timing anything
    files = [str(settings.paths.landing_root / s) for s in settings.sources]
    baseline = []
    for attempt in ("cold", "warm"):
        t = time.perf_counter()
        baseline_rows = spark.read.json(files).count()
        baseline.append(time.perf_counter() - t)
        step(
            f"baseline ({attempt}): spark.read.json(...).count() = {baseline_rows:,} rows "
            f"in {baseline[-1]:.1f} s"
        )

    passes = []
    for attempt in ("cold", "warm"):
        paths = settings.paths.model_copy(
            update={
                "lake_root": root / f"lake-{attempt}",
                "checkpoint_root": root / f"ckpt-{attempt}",
            }
        )
        run_settings = settings.model_copy(update={"paths": paths})
        lake = Lake(paths.lake_root)
        step(f"pipeline ({attempt}): landing -> bronze -> silver, all sources")
        t = time.perf_counter()
        Ingestion(spark, run_settings, lake, on_event=step).run()
        passes.append(time.perf_counter() - t)
        silver = sum(lake.table(f"silver.{s}").count() for s in settings.sources)  # type: ignore[union-attr]
        quarantined = lake.table("silver.quarantine").count()  # type: ignore[union-attr]
        assert silver + quarantined == summary.events, "every line ends in silver or quarantine"
        step(f"pipeline ({attempt}): {passes[-1]:.1f} s")

    events_per_s = summary.events / passes[1]
    baseline_per_s = baseline_rows / baseline[1]
    print(
        json.dumps(
            {
                "events": summary.events,
                "silver_rows": silver,
                "quarantined_rows": quarantined,
                "events_per_s": round(events_per_s),
                "pipeline_s": round(passes[1], 2),
                "baseline_events_per_s": round(baseline_per_s),
                "baseline_json_count_s": round(baseline[1], 2),
                "ratio": round(events_per_s / baseline_per_s, 3),
                "cold_events_per_s": round(summary.events / passes[0]),
                "cold_pipeline_s": round(passes[0], 2),
                "cold_baseline_json_count_s": round(baseline[0], 2),
                "cold_ratio": round(
                    (summary.events / passes[0]) / (baseline_rows / baseline[0]), 3
                ),
                "cores": spark.sparkContext.defaultParallelism,
            }
        )
    )


if __name__ == "__main__":
    main()
