"""Connected components on Spark agree with an independent oracle (networkx), including the
shapes that break naive code: long paths, big hubs, singletons, duplicate and self edges."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from pipelines.identity.components import connected_components

pytestmark = pytest.mark.spark


def _partition_spark(spark, edges: list[tuple[int, int]]) -> tuple[set[frozenset[int]], dict]:
    frame = spark.createDataFrame(edges, "src long, dst long")
    result = connected_components(frame)
    rows = result.assignment.collect()
    groups: dict[int, set[int]] = {}
    for r in rows:
        groups.setdefault(r["component"], set()).add(r["node"])
    for component, members in groups.items():
        assert component == min(members), "a component is named by its smallest node"
    return {frozenset(g) for g in groups.values()}, {"rounds": result.rounds}


def _partition_oracle(edges: list[tuple[int, int]]) -> set[frozenset[int]]:
    g = nx.Graph()
    g.add_edges_from(edges)
    return {frozenset(c) for c in nx.connected_components(g)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_graphs_match_networkx(spark, seed: int) -> None:
    rng = random.Random(seed)
    n = 400
    edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.choice([150, 300, 500]))]
    got, _ = _partition_spark(spark, edges)
    assert got == _partition_oracle(edges)


def test_long_path_with_shuffled_ids(spark) -> None:
    ids = list(range(3000))
    random.Random(7).shuffle(ids)
    edges = list(zip(ids, ids[1:], strict=False))
    got, info = _partition_spark(spark, edges)
    assert got == {frozenset(ids)}
    assert info["rounds"] < 30  # logarithmic, not one round per hop


def test_hub_with_tens_of_thousands_of_edges(spark) -> None:
    hub = 50_000
    edges = [(hub, leaf) for leaf in range(20_000)] + [(20_001, 20_002)]
    got, _ = _partition_spark(spark, edges)
    assert got == {frozenset([hub, *range(20_000)]), frozenset([20_001, 20_002])}


def test_singletons_duplicates_and_self_edges(spark) -> None:
    edges = [(5, 5), (9, 9), (1, 2), (2, 1), (1, 2), (2, 3), (3, 3), (10, 11), (11, 10)]
    got, _ = _partition_spark(spark, edges)
    assert got == {frozenset([5]), frozenset([9]), frozenset([1, 2, 3]), frozenset([10, 11])}
