"""Shared fixtures: one local Spark session for the whole run, settings on temporary folders, and
one generated operator streamed through every stage (identity, gold and API tests read it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    from pipelines.lakehouse.spark import spark_session

    session = spark_session(
        EngineCfg(spark_master="local[2]", shuffle_partitions=2, driver_memory="2g"),
        app_name="cdp-tests",
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def operator(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An operator ingested one landing file per trigger; identity and gold refreshed after
    each micro-batch (in lockstep, so every batch is an incremental step of its own). Twelve
    days, so 7- and 30-day windows differ."""
    from pipelines.identity.stage import refresh_identity
    from pipelines.ingest.reference import load_reference
    from pipelines.ingest.stream import Ingestion
    from pipelines.lakehouse.lake import Lake
    from pipelines.profile.stage import refresh_gold
    from pipelines.synthetic.operator import generate

    root = tmp_path_factory.mktemp("operator")
    settings = settings_for(root, max_files_per_trigger=1)
    gen = settings.generator.model_copy(
        update={"subscribers": 300, "days": 12, "files_per_source": 4, "late_event_share": 0.03}
    )
    generate(gen, settings.identity.country, settings.paths.landing_root, settings.paths.truth_root)
    lake = Lake(settings.paths.lake_root)
    load_reference(lake, settings.reference, settings.paths.landing_root / "reference")
    modes: dict[str, list[str]] = {"identity": [], "gold": []}

    def downstream(session: Any) -> None:
        modes["identity"].append(refresh_identity(session, lake, settings).mode)
        modes["gold"].append(refresh_gold(lake, settings).mode)

    Ingestion(spark, settings, lake, downstream=downstream, lockstep=True).run()
    return {"settings": settings, "lake": lake, "modes": modes}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = PROJECT_ROOT / "docs"


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Under docs/ when CDP_UPDATE_SCREENSHOTS=1 (to refresh the kept pictures), else tmp."""
    return DOCS / name if os.environ.get("CDP_UPDATE_SCREENSHOTS") else tmp_path / name


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright (`make test` installs it)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test` (scripts/ensure-chromium.sh)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()
