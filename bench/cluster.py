"""A real Spark standalone cluster on loopback: one master and N workers, each a JVM started
from the PySpark distribution's own launch classes (`bin/spark-class`), each worker launching
its own executor JVM for an application. Used by the cluster test and the scale benchmark; point
the pipeline at it by setting only `engine.spark_master` (or CDP_SPARK_MASTER) to `url`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pyspark

HOST = "127.0.0.1"
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class StandaloneCluster:
    """Master + `workers` workers (`cores` and `memory` each) with logs and work dirs under
    `root`; `stop()` ends every JVM it started, and the executors with them."""

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "2g") -> None:
        self.root = root
        self.port, self.ui_port = _free_port(), _free_port()
        self.url = f"spark://{HOST}:{self.port}"
        self._procs: list[subprocess.Popen[bytes]] = []
        root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": HOST,
            "SPARK_NO_DAEMONIZE": "1",
            "SPARK_LOG_DIR": str(root / "logs"),
        }
        self._start(
            "master",
            ["org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(self.port)],
            ["--webui-port", str(self.ui_port)],
            env,
        )
        self._wait(lambda s: s.get("status") == "ALIVE", "the master to come up")
        for i in range(workers):
            work = root / f"worker-{i}"
            work.mkdir(exist_ok=True)
            self._start(
                f"worker-{i}",
                ["org.apache.spark.deploy.worker.Worker", self.url, "--host", HOST],
                [
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--work-dir",
                    str(work),
                    "--webui-port",
                    str(_free_port()),
                ],
                env,
            )
        self._wait(
            lambda s: sum(w.get("state") == "ALIVE" for w in s.get("workers", [])) == workers,
            f"{workers} workers to register",
        )

    def _start(self, name: str, main: list[str], opts: list[str], env: dict[str, str]) -> None:
        log = (self.root / f"{name}.log").open("wb")
        self._procs.append(
            subprocess.Popen(
                [str(SPARK_CLASS), *main, *opts], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )

    def state(self) -> dict[str, Any]:
        """The master's view (its web UI's JSON): workers, running and completed applications."""
        with urllib.request.urlopen(f"http://{HOST}:{self.ui_port}/json/", timeout=5) as r:
            return dict(json.load(r))

    def _wait(self, ready: Any, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(
                        f"a Spark process exited ({p.args}); see the logs in {self.root}"
                    )
            try:
                if ready(self.state()):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}; see the logs in {self.root}")

    def executor_dirs(self) -> list[Path]:
        """One folder per executor any worker launched (`<work>/<app id>/<executor id>`)."""
        return sorted(p for p in self.root.glob("worker-*/app-*/*") if p.is_dir())

    def stop(self) -> None:
        for p in reversed(self._procs):
            p.terminate()
        for p in self._procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
