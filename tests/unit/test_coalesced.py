"""The stream's downstream runner: micro-batches never wait for identity and gold, asks made
during a run fold into one next run, lockstep waits for its own run, and a failed run reaches
the ingesting side instead of vanishing in a thread."""

from __future__ import annotations

import threading

import pytest

from pipelines.ingest.stream import Coalesced

pytestmark = pytest.mark.unit


def test_asks_during_a_run_fold_into_one_next_run() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def step() -> None:
        runs.append(len(runs))
        started.set()
        release.wait(5)

    runner = Coalesced(step)
    runner.request()
    assert started.wait(5)
    for _ in range(5):  # five batches commit while the first run is busy
        runner.request()
    release.set()
    runner.close()
    assert len(runs) == 2  # the first run, then one run for all five asks


def test_lockstep_returns_after_a_run_that_started_after_the_ask() -> None:
    seen: list[int] = []
    committed = [0]

    def step() -> None:
        seen.append(committed[0])

    runner = Coalesced(step)
    for batch in range(1, 4):
        committed[0] = batch
        runner.request(wait=True)
        assert seen[-1] == batch  # the run it waited for saw this batch
    runner.close()
    assert seen == [1, 2, 3]


def test_a_failed_run_is_raised_to_the_next_ask_and_on_close() -> None:
    def step() -> None:
        raise ValueError("gold table missing")

    runner = Coalesced(step)
    with pytest.raises(RuntimeError, match="gold table missing"):
        runner.request(wait=True)
    with pytest.raises(RuntimeError, match="downstream step failed"):
        runner.raise_failure()
    with pytest.raises(RuntimeError, match="gold table missing"):
        runner.close()
