"""What a new user sees, in a real browser (Debian's Chromium driven by Playwright):
`dagster dev -w workspace.yaml` shows every table in the asset graph, and the data docs site
`cdp docs` builds opens with a page per suite.

Set CDP_UPDATE_SCREENSHOTS=1 to refresh the screenshots kept under docs/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.server import HOST, free_port
from pipelines.config import PROJECT_ROOT
from tests.conftest import screenshot_path

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dagster dev -w workspace.yaml` from the project folder, on an empty data root."""
    home = tmp_path_factory.mktemp("dagster-home")
    root = tmp_path_factory.mktemp("dagster-data")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "CDP_DATA_ROOT": str(root)}
    dagster = Path(sys.executable).parent / "dagster"
    log = (home / "dagster-dev.log").open("w")
    proc = subprocess.Popen(
        [str(dagster), "dev", "-w", "workspace.yaml", "-h", HOST, "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dagster dev did not start; see {home / 'dagster-dev.log'}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


def test_dagster_ui_shows_every_table_in_the_asset_graph(
    dagster_ui: str, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    page.goto(f"{dagster_ui}/asset-groups", wait_until="networkidle")
    skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
    if skip.count():
        skip.click()
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="zoom_out", exact=True).click()  # the whole graph in view
    for key in ("identity_map", "profiles", "quarantine", "outbox", "tariffs", "daily_usage"):
        page.get_by_text(key, exact=True).first.wait_for(timeout=30_000)
    for group in ("bronze", "silver", "identity", "gold", "reference"):
        assert page.get_by_text(group, exact=True).count() >= 1
    page.screenshot(path=str(screenshot_path(tmp_path, "dagster-asset-graph.png")))

    page.goto(f"{dagster_ui}/assets", wait_until="networkidle")
    catalog = page.inner_text("body")
    for key in ("bronze / network", "silver / network", "gold / profiles", "ops / outbox"):
        page.get_by_text(key).first.wait_for(timeout=30_000)
    assert "Validated network events" in catalog or page.get_by_text("silver / network").count()
    page.close()


def test_data_docs_build_and_open_without_a_cdn(browser: Any, tmp_path: Path) -> None:
    # No network for the build (every request goes to a dead proxy) nor for the page: the
    # assets come from what `make install` fetched, never from a download at run time.
    dead = "http://127.0.0.1:9"
    offline = {"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "ALL_PROXY": dead, "NO_PROXY": ""}
    env = {**os.environ, "CDP_DATA_ROOT": str(tmp_path), **offline}
    cdp = Path(sys.executable).parent / "cdp"
    run = subprocess.run(
        [str(cdp), "docs"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    index = next(
        line.split("file://", 1)[1].strip() for line in run.stdout.splitlines() if "file://" in line
    )
    assert Path(index).exists()
    html = Path(index).read_text()
    assert "unpkg.com" not in html and "code.jquery.com" not in html  # vendored: works offline
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    remote: list[str] = []
    page.route(
        re.compile(r"^https?://"), lambda route: (remote.append(route.request.url), route.abort())
    )
    page.goto(f"file://{index}", wait_until="load")
    page.get_by_role("link", name="quality.source_health").first.wait_for(timeout=30_000)
    page.locator("#Expectation-Suites-tab").click()
    page.locator("#Expectation-Suites td", has_text="gold.profiles").first.wait_for(timeout=30_000)
    page.screenshot(path=str(screenshot_path(tmp_path, "data-docs.png")))
    search = page.locator("#Expectation-Suites").get_by_placeholder("Search")
    for suite in ("bronze.network", "silver.network", "quality.source_health", "ref.tariffs"):
        search.fill(suite)  # one suite per table: more than a page of them
        search.press("Enter")
        page.locator("#Expectation-Suites td", has_text=suite).first.wait_for(timeout=10_000)
    search.fill("gold.profiles")
    search.press("Enter")
    # the suite's own page
    page.locator("#Expectation-Suites td", has_text="gold.profiles").first.click()
    page.get_by_text("churn_risk").first.wait_for(timeout=30_000)
    assert "consent_marketing_granted" in page.inner_text("body")
    page.close()
    assert remote == []  # the pages asked the network for nothing
