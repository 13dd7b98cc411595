"""Stage locks: one process runs a stage at a time (the stream, `cdp run`, Dagster and the
deliverer share them), held with `flock` on a file next to the checkpoints, so the lock goes
with the process however it ends (kill -9 included)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StageBusyError(RuntimeError):
    """Another process is already running this stage."""


@contextmanager
def stage_lock(checkpoint_root: Path, stage: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock for `stage`; released when the process dies too."""
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    path = checkpoint_root / f"{stage}.lock"
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise StageBusyError(
                f"stage {stage} is already running in another process (pid {holder}); "
                f"wait for it to finish or stop it (lock: {path})"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
