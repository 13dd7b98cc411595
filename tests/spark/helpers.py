"""Small helpers for tests that run the real ingestion on temporary folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from pipelines.config import Settings
from pipelines.ingest.stream import Ingestion
from pipelines.lakehouse.lake import Lake


def event(source: str, event_type: str, event_id: str, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "source": source,
        "event_type": event_type,
        "event_ts": "2026-10-02T10:00:00+05:00",
        "schema_version": 1,
        **payload,
    }


def land(settings: Settings, source: str, name: str, lines: list[dict[str, Any] | str]) -> Path:
    """Write a landing file the way a source would (whole file, then visible)."""
    folder = settings.paths.landing_root / source
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    return tmp.rename(folder / name)


def ingest(spark: SparkSession, settings: Settings, sources: list[str]) -> Ingestion:
    ingestion = Ingestion(spark, settings, Lake(settings.paths.lake_root))
    ingestion.run(sources)
    return ingestion


def rows(settings: Settings, table: str) -> list[dict[str, Any]]:
    return Lake(settings.paths.lake_root).read_arrow(table).to_pylist()
