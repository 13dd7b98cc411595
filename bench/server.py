"""`cdp serve` as a child process on a free loopback port, for benchmarks and the API tests:
started on a data root, ready when /readyz answers 200, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return round(total, 1)


class ServeProcess:
    """`cdp serve` on `root` (CDP_DATA_ROOT) with extra CDP_* settings in `env`; ready when
    `ready_path` answers 200 (/readyz: a snapshot is loaded; /healthz: the process answers).
    Its stderr (the access log, warnings) goes to `log_path`, `serve-<port>.log` in `root`."""

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        timeout: float = 300,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = free_port()
        self.ready_path = ready_path
        self.url = f"http://{HOST}:{self.port}"
        full = {**os.environ, **(env or {}), "CDP_DATA_ROOT": str(root)}
        full["CDP_API_PORT"] = str(self.port)
        cdp = Path(sys.executable).parent / "cdp"
        started = time.perf_counter()
        self.log_path = root / f"serve-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(cdp), "serve"], env=full, cwd=PROJECT, start_new_session=True, stderr=log
            )
        while not self._ready():
            if self.process.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"cdp serve exited with {self.process.returncode}:\n{tail}")
            if time.perf_counter() - started > timeout:
                self.stop()
                raise RuntimeError(f"cdp serve was not ready within {timeout:.0f} s")
            time.sleep(0.2)
        self.ready_s = time.perf_counter() - started

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> bool:
        """SIGTERM, then True when the server shut down gracefully: uvicorn finishes the
        lifespan (the audit queue is written) and then re-raises the signal, so the exit status
        is -SIGTERM rather than 0."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=60) in (0, -signal.SIGTERM)
