"""Landing -> bronze -> silver throughput on a generated operator of about a million events.

Baseline, in the same Spark session: Spark reading the same landing files as JSON and counting
them (schema inference included), the floor for "touch every line once". Prints one JSON line.
Run: .venv/bin/python bench/ingest.py   (no arguments; about 3 minutes on 2 cores)
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
    summary = generate(cfg, settings.identity.country, settings.paths.landing_root,
                       settings.paths.truth_root)
    step(f"generated {summary.events:,} lines in {time.perf_counter() - t:.1f} s")

    spark = spark_session(settings.engine, app_name="bench-ingest")
    spark.range(1000).count()  # start the executors before timing anything
    step("baseline: spark.read.json(all landing files).count()")
    t = time.perf_counter()
    files = [str(settings.paths.landing_root / s) for s in settings.sources]
    baseline_rows = spark.read.json(files).count()
    baseline_s = time.perf_counter() - t
    step(f"baseline {baseline_rows:,} rows in {baseline_s:.1f} s")

    step("pipeline: landing -> bronze -> silver (availableNow, all sources)")
    lake = Lake(settings.paths.lake_root)
    t = time.perf_counter()
    Ingestion(spark, settings, lake, on_event=step).run()
    pipeline_s = time.perf_counter() - t
    silver = sum(lake.table(f"silver.{s}").count() for s in settings.sources)  # type: ignore[union-attr]
    quarantined = lake.table("silver.quarantine").count()  # type: ignore[union-attr]
    assert silver + quarantined == summary.events, "every landing line ends in silver or quarantine"

    events_per_s = summary.events / pipeline_s
    baseline_per_s = baseline_rows / baseline_s
    print(json.dumps({
        "events": summary.events,
        "silver_rows": silver,
        "quarantined_rows": quarantined,
        "pipeline_s": round(pipeline_s, 2),
        "events_per_s": round(events_per_s),
        "baseline_json_count_s": round(baseline_s, 2),
        "baseline_events_per_s": round(baseline_per_s),
        "ratio": round(events_per_s / baseline_per_s, 3),
        "cores": spark.sparkContext.defaultParallelism,
    }))


if __name__ == "__main__":
    main()
