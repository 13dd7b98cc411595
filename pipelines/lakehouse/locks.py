"""Stage locks: one process runs a stage at a time (the stream, `cdp run`, Dagster and the
deliverer share them), held with `filelock` (an `flock` on a file next to the checkpoints), so
the lock goes with the process however it ends (kill -9 included). The holder writes its pid
into the file, so the refusal can say who holds it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class StageBusyError(RuntimeError):
    """Another process is already running this stage."""


@contextmanager
def stage_lock(checkpoint_root: Path, stage: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock for `stage`; released when the process dies too."""
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    path = checkpoint_root / f"{stage}.lock"
    lock = FileLock(path, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        holder = path.read_text().strip() if path.exists() else ""
        raise StageBusyError(
            f"stage {stage} is already running in another process (pid {holder or 'unknown'}); "
            f"wait for it to finish or stop it (lock: {path})"
        ) from None
    try:
        path.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()
