"""Identity quality on the default generated operator (conf/generator.yaml), against its truth.

Runs landing -> bronze -> silver -> identity (micro-batch by micro-batch, as `cdp run` does), then
scores `gold.identity_map`: pairwise and B-cubed precision and recall of identifier-to-person
assignment, family/corporate accounts collapsed into one person, recycled numbers whose owners
were merged, numbers with two open tenures, and one row per identity situation the generator
made (precision and recall over the pairs touching the persons in it). Baseline in the same
run: plain connected components of the same merge evidence (no tenures, no guardrails, no
blocked values), which is what a deterministic merge without those rules gives. Prints one JSON
line.
Run: .venv/bin/python bench/identity_quality.py   (no arguments; a few minutes on 2 cores)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import PROJECT_ROOT, IdentityCfg, JunkCfg, load_settings  # noqa: E402
from pipelines.identity.quality import (  # noqa: E402
    assignment,
    by_situation,
    evaluate,
    seen_values,
    truth_identifiers,
    value_of,
)
from pipelines.identity.resolve import Blocklist, regions_of  # noqa: E402
from pipelines.identity.stage import refresh_identity  # noqa: E402
from pipelines.ingest.stream import Ingestion  # noqa: E402
from pipelines.lakehouse.catalog import (
    EVIDENCE,  # noqa: E402
    MAP,  # noqa: E402
)
from pipelines.lakehouse.lake import Lake  # noqa: E402
from pipelines.lakehouse.spark import spark_session  # noqa: E402
from pipelines.synthetic.operator import generate  # noqa: E402


def step(msg: str) -> None:
    print(f"[bench/identity_quality] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="cdp-identity-quality-"))
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    gen = settings.generator
    step(f"generating the default operator ({gen.subscribers} subscribers, {gen.days} days)")
    generate(gen, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root)
    spark = spark_session(settings.engine, app_name="bench-identity-quality")
    lake = Lake(settings.paths.lake_root)
    started = time.perf_counter()

    def identity(session: object) -> None:
        r = refresh_identity(spark, lake, settings)
        if r.evidence_rows:
            step(f"identity {r.mode}: {r.evidence_rows} evidence rows in {r.seconds:.1f} s")

    Ingestion(spark, settings, lake, downstream=identity).run()
    run_s = time.perf_counter() - started
    evidence = lake.read_arrow(EVIDENCE)
    seen = seen_values(evidence)
    identity_map = lake.read_arrow(MAP)
    ours = evaluate(assignment(identity_map), settings.paths.truth_root, seen)
    step(f"ours: {ours}")
    situations = by_situation(assignment(identity_map), settings.paths.truth_root, seen)
    step(f"{'situation':<26} {'persons':>7} {'ids':>6} {'precision':>9} {'recall':>7}")
    for q in situations:
        step(
            f"{q.situation:<26} {q.persons:>7} {q.identifiers:>6} {q.precision:>9.4f} "
            f"{q.recall:>7.4f}"
        )
    open_now = identity_map.filter(
        pc.and_(
            pc.equal(identity_map.column("id_type"), "msisdn"), pc.is_null(identity_map["valid_to"])
        )
    )
    per_number = open_now.group_by("id_value").aggregate([([], "count_all")])
    two_open = pc.sum(pc.greater(per_number.column("count_all"), 1)).as_py() or 0

    # Baseline: one person per connected component of all merge evidence.
    naive = IdentityCfg(country=settings.identity.country, blocked=JunkCfg())
    region: dict[str, str] = {}
    labels = regions_of(evidence, Blocklist(naive))
    for row, label in zip(
        evidence.select(["kind", "a_type", "a_value", "b_type", "b_value"]).to_pylist(),
        labels,
        strict=True,
    ):
        region[f"{row['a_type']}:{row['a_value']}"] = label
        if row["kind"] == "merge":
            region[f"{row['b_type']}:{row['b_value']}"] = label
    truth = truth_identifiers(settings.paths.truth_root)
    baseline_assignment = {k: region[value_of(k)] for k in truth if value_of(k) in region}
    baseline = evaluate(baseline_assignment, settings.paths.truth_root, seen)
    step(f"baseline (plain connected components): {baseline}")
    spark.stop()
    print(
        json.dumps(
            {
                "identifiers": ours.identifiers,
                "pairwise_precision": round(ours.pairwise_precision, 5),
                "pairwise_recall": round(ours.pairwise_recall, 5),
                "bcubed_precision": round(ours.bcubed_precision, 5),
                "bcubed_recall": round(ours.bcubed_recall, 5),
                "collapsed_accounts": ours.collapsed_accounts,
                "shared_accounts": ours.shared_accounts,
                "recycled_numbers": ours.recycled_numbers,
                "recycled_merged": ours.recycled_merged,
                "numbers_with_two_open_tenures": two_open,
                "situations": {
                    q.situation: {
                        "persons": q.persons,
                        "pairwise_precision": round(q.precision, 5),
                        "pairwise_recall": round(q.recall, 5),
                    }
                    for q in situations
                },
                "baseline_pairwise_precision": round(baseline.pairwise_precision, 5),
                "baseline_pairwise_recall": round(baseline.pairwise_recall, 5),
                "baseline_collapsed_accounts": baseline.collapsed_accounts,
                "baseline_recycled_merged": baseline.recycled_merged,
                "pipeline_run_s": round(run_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
