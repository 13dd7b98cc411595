"""Where the ingest pipeline's time goes, against the same baseline as bench/ingest.py.

A ladder over the bench's operator (~1M landing lines, all four sources), each step doing what
the one above it did plus one more thing, all in one JVM after WARMUP pipeline rounds (the
steady state: the JIT has stopped compiling), each the median of ROUNDS:

  baseline    spark.read.json(files).count()
  text        the lines read as text, nothing else
  parse       + each line parsed into a map (from_json)
  fields      + the contract's fields read out of the map
  validate    + every contract rule (the whole validation, noop sink)
  collect     + the validated rows collected to Python as Arrow
  pipeline    the real thing: + Delta writes, duplicates, reasons, checkpoints

It shows how much of bench/ingest.py's ratio target (pipeline >= 0.3 x the baseline's rate) the
Spark pass alone already spends. Prints one JSON line of seconds and each step's share of the
time that target allows. Run: .venv/bin/python bench/ingest_floor.py   (no arguments; ~5 min)
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from bench.ingest import generate_operator, pipeline_pass, step  # noqa: E402
from pipelines.config import ENVELOPE_FIELDS, Settings, SourceContract  # noqa: E402
from pipelines.ingest.silver import ValidationRules, validate_events  # noqa: E402
from pipelines.ingest.stream import to_bronze  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402

WARMUP, ROUNDS = 8, 5
TARGET_RATIO = 0.3


def _noop(frame: DataFrame) -> None:
    frame.write.format("noop").mode("overwrite").save()


def _per_source(
    spark: SparkSession, settings: Settings, work: Callable[[DataFrame, SourceContract], None]
) -> None:
    for source in settings.sources:
        lines = spark.read.text(str(settings.paths.landing_root / source)).select(
            "value", F.col("_metadata.file_path")
        )
        work(lines, settings.contract(source))


def _ladder(
    spark: SparkSession, settings: Settings, run: Path, events: int
) -> dict[str, Callable[[], object]]:
    """The ladder's steps by name, each a callable that does its work once."""
    rules = ValidationRules.from_settings(settings)
    files = [str(settings.paths.landing_root / s) for s in settings.sources]
    as_map = F.from_json("value", "map<string,string>")

    def fields(lines: DataFrame, contract: SourceContract) -> None:
        names = [*ENVELOPE_FIELDS, *contract.silver_fields()]
        parsed = lines.select(as_map.alias("m"))
        _noop(parsed.select(*[F.col("m")[f] for f in names], F.size("m")))

    def validated(lines: DataFrame, contract: SourceContract) -> DataFrame:
        return validate_events(
            to_bronze(lines, contract.source, datetime.now(UTC), 0), contract, rules, explain=False
        )

    rounds = itertools.count()
    return {
        "baseline": lambda: spark.read.json(files).count(),
        "text": lambda: _per_source(spark, settings, lambda lines, c: _noop(lines)),
        "parse": lambda: _per_source(
            spark, settings, lambda lines, c: _noop(lines.select(F.size(as_map)))
        ),
        "fields": lambda: _per_source(spark, settings, fields),
        "validate": lambda: _per_source(spark, settings, lambda li, c: _noop(validated(li, c))),
        "collect": lambda: _per_source(spark, settings, lambda li, c: validated(li, c).toArrow()),
        "pipeline": lambda: pipeline_pass(settings, run / f"ladder-{next(rounds)}", events),
    }


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-bench-ingest-floor-"))
    settings, events = generate_operator(root)
    spark = spark_session(settings.engine, app_name="bench-ingest-floor")
    files = [str(settings.paths.landing_root / s) for s in settings.sources]
    for i in range(1, WARMUP + 1):
        took = pipeline_pass(settings, root / f"warmup-{i}", events)
        spark.read.json(files).count()
        step(f"warm-up {i}/{WARMUP}: pipeline {took:.1f} s")
    steps = _ladder(spark, settings, root, events)
    timings: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(1, ROUNDS + 1):
        for name, work in steps.items():
            started = time.perf_counter()
            work()
            timings[name].append(time.perf_counter() - started)
        step(f"round {i}/{ROUNDS}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in timings.items()))
    seconds = {name: statistics.median(v) for name, v in timings.items()}
    allowed = seconds["baseline"] / TARGET_RATIO
    print(
        json.dumps(
            {
                "events": events,
                **{f"{name}_s": round(v, 2) for name, v in seconds.items()},
                "allowed_at_ratio_0_3_s": round(allowed, 2),
                **{
                    f"{name}_share_of_allowed": round(v / allowed, 2)
                    for name, v in seconds.items()
                    if name != "baseline"
                },
                "ratio": round(seconds["baseline"] / seconds["pipeline"], 3),
                "cores": spark.sparkContext.defaultParallelism,
            }
        )
    )


if __name__ == "__main__":
    main()
