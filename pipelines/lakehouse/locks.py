"""Stage locks: one process runs a stage at a time (the stream, `cdp run`, Dagster and the
deliverer share them), held with `filelock` (an `flock` on a file next to the checkpoints), so
the lock goes with the process however it ends (kill -9 included). The holder writes its pid
(and what it is, e.g. a Dagster run) into the file, so a refusal can say who holds it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class StageBusyError(RuntimeError):
    """Another process is already running this stage."""


def _path(checkpoint_root: Path, stage: str) -> Path:
    return checkpoint_root / f"{stage}.lock"


def _holder(path: Path) -> str:
    text = path.read_text().strip() if path.exists() else ""
    return text or "unknown"


@contextmanager
def stage_lock(checkpoint_root: Path, stage: str, owner: str | None = None) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock for `stage`; released when the process dies too.
    `owner` says what holds it (shown to whoever is refused)."""
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    path = _path(checkpoint_root, stage)
    lock = FileLock(path, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        raise StageBusyError(
            f"stage {stage} is already running in another process (pid {_holder(path)}); "
            f"wait for it to finish or stop it (lock: {path})"
        ) from None
    try:
        path.write_text(str(os.getpid()) + (f", {owner}" if owner else ""))
        yield
    finally:
        lock.release()


def held_by(checkpoint_root: Path, stage: str) -> str | None:
    """Who holds `stage` now ("<pid>[, <owner>]"), or None when nobody does."""
    path = _path(checkpoint_root, stage)
    if not path.exists():
        return None
    lock = FileLock(path, blocking=False)
    try:
        lock.acquire()
    except Timeout:
        return _holder(path)
    lock.release()
    return None
