"""Full recompute of identity components on a graph of ~1M identifiers, on local Spark.

Floor, in the same run: scipy's single-machine connected_components on the same edges. The graph
has the shape of an identity graph: many small people (2-8 identifiers joined as a tree), a few
thousand larger clusters and a handful of long chains. Incremental micro-batch timing arrives with
the rest of issue #3. Prints one JSON line.
Run: .venv/bin/python bench/identity.py   (no arguments; a few minutes on 2 cores)
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.config import PROJECT_ROOT, load_settings  # noqa: E402
from pipelines.identity.components import connected_components  # noqa: E402
from pipelines.spark import spark_session  # noqa: E402

IDENTIFIERS = 1_000_000


def step(msg: str) -> None:
    print(f"[bench/identity] {msg}", file=sys.stderr, flush=True)


def identity_like_graph(n: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    ids = np.random.default_rng(seed).permutation(n).astype(np.int64)
    src: list[int] = []
    dst: list[int] = []
    i = 0
    while i < n:
        r = rng.random()
        size = rng.randint(2, 8) if r < 0.98 else (rng.randint(20, 200) if r < 0.9995 else 2000)
        size = min(size, n - i)
        members = ids[i : i + size]
        for k in range(1, size):
            # A chain for the big ones (worst case for label propagation), a tree otherwise.
            parent = k - 1 if size >= 2000 else rng.randrange(k)
            src.append(int(members[parent]))
            dst.append(int(members[k]))
        i += size
    return np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)


def main() -> None:
    settings = load_settings(PROJECT_ROOT / "conf", env={})
    src, dst = identity_like_graph(IDENTIFIERS)
    step(f"graph: {IDENTIFIERS:,} identifiers, {len(src):,} edges")

    t = time.perf_counter()
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(IDENTIFIERS, IDENTIFIERS))
    n_components, _ = scipy_components(graph, directed=False)
    scipy_s = time.perf_counter() - t
    # Identifiers that appear in no edge are their own components in scipy, not in the edge list.
    in_edges = len(np.union1d(src, dst))
    expected = n_components - (IDENTIFIERS - in_edges)
    step(f"scipy: {expected:,} components in {scipy_s:.2f} s")

    spark = spark_session(settings.engine, app_name="bench-identity")
    import pandas as pd

    edges = spark.createDataFrame(pd.DataFrame({"src": src, "dst": dst})).persist()
    edges.count()
    t = time.perf_counter()
    result = connected_components(edges)
    got = result.assignment.select("component").distinct().count()
    spark_s = time.perf_counter() - t
    step(f"spark: {got:,} components in {spark_s:.1f} s, {result.rounds} rounds")
    assert got == expected, f"spark found {got} components, scipy {expected}"
    print(
        json.dumps(
            {
                "identifiers": IDENTIFIERS,
                "edges": len(src),
                "components": got,
                "full_recompute_s": round(spark_s, 2),
                "rounds": result.rounds,
                "scipy_s": round(scipy_s, 3),
                "ratio": round(scipy_s / spark_s, 4),
                "cores": spark.sparkContext.defaultParallelism,
            }
        )
    )


if __name__ == "__main__":
    main()
