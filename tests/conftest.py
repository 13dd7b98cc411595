"""Shared fixtures: one local Spark session for the whole run, settings on temporary folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, Settings, load_settings


def settings_for(root: Path, **engine: object) -> Settings:
    """Project settings with every path under `root` (and engine overrides for the test)."""
    settings = load_settings(PROJECT_ROOT / "conf", env={"CDP_DATA_ROOT": str(root)})
    if engine:
        settings = settings.model_copy(update={"engine": settings.engine.model_copy(update=engine)})
    return settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path)


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from pipelines.config import EngineCfg
    from pipelines.spark import spark_session

    session = spark_session(
        EngineCfg(spark_master="local[2]", shuffle_partitions=2, driver_memory="2g"),
        app_name="cdp-tests",
    )
    yield session
    session.stop()
