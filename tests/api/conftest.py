"""The API on a copy of the streamed operator's lake, with a key per channel and role."""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from pipelines.lake import Lake
from tests.conftest import settings_for


@pytest.fixture(scope="package")
def served(operator: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The API on a copy of the streamed operator's lake (tests here change it), with keys."""
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(operator["settings"].paths.lake_root, root / "lake")
    settings = settings_for(root)
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"snapshot_poll_s": 0.2})}
    )
    app = create_app(settings)
    keys = {c: app.state.keys.create(f"test {c}", "channel", c) for c in settings.policy.channels}
    keys["steward"] = app.state.keys.create("test steward", "steward")
    keys["source:app"] = app.state.keys.create("test app feed", "source", "app")
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield {
            "client": client,
            "keys": keys,
            "lake": Lake(root / "lake"),
            "app": app,
            "settings": settings,
        }
