"""One generated operator streamed through every stage, shared by the identity and gold tests
(streaming it takes a minute; each module reads it, and those that change it say so)."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.gold.stage import refresh_gold
from pipelines.identity.stage import refresh_identity
from pipelines.ingest import Ingestion
from pipelines.lake import Lake
from pipelines.reference import load_reference
from pipelines.synthetic import generate
from tests.conftest import settings_for


@pytest.fixture(scope="session")
def operator(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An operator ingested one landing file per trigger; identity and gold refreshed after
    each micro-batch, as `cdp stream` does. Twelve days, so 7- and 30-day windows differ."""
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

    Ingestion(spark, settings, lake, downstream=downstream).run()
    return {"settings": settings, "lake": lake, "modes": modes}
