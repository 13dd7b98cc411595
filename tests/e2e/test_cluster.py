"""The whole pipeline on a real Spark standalone cluster (a master and two workers on loopback,
each worker with its own executor JVM), configured by changing only `spark_master`: its tables
equal a local run's on the same landing files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.cluster import StandaloneCluster
from tests.e2e.runs import CDP, cdp_env, conf_with, landed_twice, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    c = StandaloneCluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g")
    try:
        yield c
    finally:
        c.stop()


def test_the_pipeline_on_a_cluster_equals_the_local_run(
    tmp_path: Path, cluster: StandaloneCluster
) -> None:
    local_conf = conf_with(tmp_path / "local", spark_master="local[2]", driver_memory="1g")
    cluster_conf = conf_with(tmp_path / "cluster", spark_master=cluster.url, driver_memory="1g")
    local, remote = tmp_path / "local" / "data", tmp_path / "cluster" / "data"
    landed_twice(local_conf, local, remote, files_per_source=3)

    subprocess.run([*CDP, "run"], env=cdp_env(local_conf, local), check=True, capture_output=True)
    ran = subprocess.run(
        [*CDP, "run"], env=cdp_env(cluster_conf, remote), capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]

    # The work ran on both workers, each in an executor JVM of its own.
    apps = cluster.state()["completedapps"] + cluster.state()["activeapps"]
    assert any(a["name"] == "cdp" for a in apps), apps
    executors = cluster.executor_dirs()
    assert {e.parent.parent.name for e in executors} == {"worker-0", "worker-1"}, executors
    assert snapshot(remote) == snapshot(local)
