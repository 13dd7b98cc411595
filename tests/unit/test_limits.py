"""Per-key rate limits of the API process: over `api.rate_limits` a key gets 429 with a
Retry-After it can act on, other keys are not affected, and every answer carries the security
headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from pipelines.config import RateLimitsCfg
from pipelines.ops.keys import KeyStore
from tests.conftest import settings_for

pytestmark = pytest.mark.unit


@pytest.fixture
def api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The app on an empty data root, with 3 collector posts and 3 lookups a minute per key."""
    settings = settings_for(tmp_path)
    limits = RateLimitsCfg(lookup="3/minute", collect="3/minute")
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"rate_limits": limits})}
    )
    store = KeyStore(settings.database_url)
    keys = {
        "app": store.create("app feed", "source", "app"),
        "app2": store.create("second app feed", "source", "app"),
        "nba": store.create("nba", "channel", "nba_engine"),
    }
    with TestClient(create_app(settings)) as client:
        yield {"client": client, "keys": keys}


def test_a_key_over_its_collect_rate_gets_429_with_retry_after(api: dict[str, Any]) -> None:
    event = {"event_id": "a-1", "source": "app", "event_type": "open", "app_user_id": "u1"}

    def post(key: str) -> Any:
        return api["client"].post(
            "/v1/collect/app", content=json.dumps(event), headers={"X-API-Key": api["keys"][key]}
        )

    assert [post("app").status_code for _ in range(3)] == [202, 202, 202]
    over = post("app")
    assert over.status_code == 429 and "api.rate_limits.collect" in over.json()["detail"]
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert post("app2").status_code == 202  # the limit is per key


def test_a_channel_over_its_lookup_rate_gets_429(api: dict[str, Any]) -> None:
    headers = {"X-API-Key": api["keys"]["nba"]}
    codes = [
        api["client"].get("/v1/profiles/msisdn/998901234567", headers=headers).status_code
        for _ in range(4)
    ]
    assert codes == [503, 503, 503, 429]  # no gold snapshot here: 503 until the limit
    over = api["client"].get("/v1/profiles/msisdn/998901234567", headers=headers)
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    assert over.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in over.headers["content-security-policy"]
