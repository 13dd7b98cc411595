"""Stewards' releases past the quality gate: per table, the version a steward reviewed and let
through, and when (a JSON file next to the lake; the stream watches it). Reads only delta-rs, so
the CLI and the API (no JVM) both release."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import Settings
from pipelines.lakehouse.reader import LakeReader


def _releases_file(settings: Settings) -> Path:
    return settings.paths.lake_root.parent / "quality" / "released.json"


def releases(settings: Settings) -> dict[str, dict[str, object]]:
    """What stewards released past the gate: per table, the version and when."""
    path = _releases_file(settings)
    return json.loads(path.read_text()) if path.exists() else {}


def released_version(settings: Settings, table: str) -> int | None:
    """The version of `table` a steward last released past the gate, if any."""
    version = releases(settings).get(table, {}).get("version")
    return version if isinstance(version, int) else None


def release(lake: LakeReader, settings: Settings, table: str) -> int:
    """Let the rows of `table` waiting now pass the gate (after the steward reviewed them);
    for the source-health check, the quarantine counted so far. Returns the released version."""
    version = lake.version(table)
    if version is None:
        raise FileNotFoundError(f"{table} does not exist under {lake.root}")
    data = releases(settings)
    data[table] = {"version": version, "at": datetime.now(UTC).isoformat()}
    path = _releases_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # the stream reads it while it changes: never half a file
    return version
