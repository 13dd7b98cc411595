"""The API as `cdp serve` runs it (uvicorn in its own process, on loopback) on a copy of the
streamed operator's lake, with a key per channel and role."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.config import PROJECT_ROOT
from pipelines.keys import KeyStore
from pipelines.lake import Lake
from tests.conftest import settings_for

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """`cdp serve` in a child process; stopped with SIGTERM like a supervisor would."""

    def __init__(self, root: Path, workers: int = 1) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = {
            **os.environ,
            "CDP_DATA_ROOT": str(root),
            "CDP_API_PORT": str(self.port),
            "CDP_API_WORKERS": str(workers),
            "CDP_API_SNAPSHOT_POLL_S": "0.2",
        }
        cdp = Path(sys.executable).parent / "cdp"
        self.process = subprocess.Popen(
            [str(cdp), "serve"], env=env, cwd=PROJECT_ROOT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"cdp serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("cdp serve was not ready within 120 s")
            time.sleep(0.2)

    def stop(self) -> bool:
        """SIGTERM, then True when the server shut down gracefully: uvicorn finishes the
        lifespan (the audit queue is written) and then re-raises the signal, so the exit status
        is -SIGTERM rather than 0."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=60) in (0, -signal.SIGTERM)


@pytest.fixture(scope="package")
def served(operator: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A live server on a copy of the streamed operator's lake (tests here change it), with
    keys, and an HTTP client for it."""
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(operator["settings"].paths.lake_root, root / "lake")
    settings = settings_for(root)
    store = KeyStore(settings.database_url)
    keys = {c: store.create(f"test {c}", "channel", c) for c in settings.policy.channels}
    keys["steward"] = store.create("test steward", "steward")
    keys["source:app"] = store.create("test app feed", "source", "app")
    server = Server(root)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield {
                "client": client,
                "keys": keys,
                "lake": Lake(root / "lake"),
                "settings": settings,
                "server": server,
                "root": root,
            }
    finally:
        assert server.stop(), "cdp serve did not stop cleanly"
