"""The API as `cdp serve` runs it (uvicorn in its own process, on loopback) on a copy of the
streamed operator's lake, with a key per channel and role."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import polars as pl
import pyarrow as pa
import pytest

from bench.receiver import Receiver
from bench.server import ServeProcess
from pipelines.lakehouse.catalog import PROFILES
from pipelines.lakehouse.lake import Lake
from pipelines.ops.keys import KeyStore
from tests.conftest import settings_for


def new_version(lake: Lake, row: dict[str, Any]) -> None:
    """Write one profile row as a new gold.profiles version (what a micro-batch does)."""
    lake.upsert(
        PROFILES,
        pa.Table.from_pylist([row], lake.arrow_schema(PROFILES)),
        "person_id",
        delete_keys=[],
        stage="test",
    )


SECRET = "test-endpoint-secret-0123456789"
T = TypeVar("T")


def wait_for(what: str, found: Callable[[], T], timeout: float = 30) -> T:
    """`found()`'s first truthy value, polled every 50 ms; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="package")
def receiver() -> Iterator[Receiver]:
    """The channels' and subscribers' webhook endpoint (checks signatures with SECRET)."""
    r = Receiver(SECRET)
    yield r
    r.stop()


@pytest.fixture(scope="package")
def served(
    operator: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[Any]:
    """A live server on a copy of the streamed operator's lake (tests here change it), with
    keys, and an HTTP client for it. Pushes to sms_campaigns go to the receiver's /push;
    deliveries retry fast (50 ms doubling) and park after 4 attempts."""
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(operator["settings"].paths.lake_root, root / "lake")
    settings = settings_for(root)
    store = KeyStore(settings.database_url)
    keys = {c: store.create(f"test {c}", "channel", c) for c in settings.policy.channels}
    keys["steward"] = store.create("test steward", "steward")  # every domain (no domain named)
    keys["steward:billing"] = store.create("billing steward", "steward", "billing")
    keys["steward:consent"] = store.create("consent steward", "steward", "consent")
    keys["marketing"] = store.create("test marketing", "marketing")
    keys["source:app"] = store.create("test app feed", "source", "app")
    server = ServeProcess(
        root,
        {
            "CDP_API_SNAPSHOT_POLL_S": "0.2",
            "CDP_ENDPOINT_SMS_CAMPAIGNS": f"{receiver.url}/push",
            "CDP_ENDPOINT_SECRET_SMS_CAMPAIGNS": SECRET,
            "CDP_EVENTS_BACKOFF_S": "0.05",
            "CDP_EVENTS_MAX_ATTEMPTS": "4",
            "CDP_EVENTS_BATCH": "5",
            "CDP_EVENTS_POLL_S": "0.05",
            # load tests here drive one key far past a channel's rate (tests/unit/test_limits)
            "CDP_API_RATE_LIMIT_LOOKUP": "1000000/second",
        },
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield {
                "client": client,
                "keys": keys,
                "lake": Lake(root / "lake"),
                "settings": settings,
                "server": server,
                "root": root,
            }
    finally:
        assert server.stop(), "cdp serve did not stop cleanly"


def call(served: dict[str, Any], method: str, path: str, key: str, body: Any = None) -> Any:
    """A request to the served API with the key named `key` (a channel, or a role)."""
    return served["client"].request(
        method, path, json=body, headers={"X-API-Key": served["keys"][key]}
    )


def create_segment(served: dict[str, Any], name: str, rule: Any, purpose: str = "marketing") -> str:
    """Save a segment with a marketing key; its id."""
    r = call(
        served,
        "POST",
        "/v1/segments",
        "marketing",
        {"name": name, "purpose": purpose, "rule": rule},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["segment_id"])


def may_use(served: dict[str, Any], attr: str) -> pl.Expr:
    """Profiles for whom `attr` may decide anything: one of its purposes in conf/policy.yaml has
    its legal basis met (consent given, or contract)."""
    purposes = served["settings"].policy.attributes[attr]
    return pl.any_horizontal(pl.col(f"consent_{p}_granted").fill_null(False) for p in purposes)
