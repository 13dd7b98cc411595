"""The audience builder in a real browser: a marketer builds a segment in /ui (changing an
operator on the way, with no script error), sees its count and chart, saves it, pushes it to a
channel whose endpoint (a test HTTP server) checks the signature and the contents, exports it as
CSV and pages through its pushes. Set CDP_UPDATE_SCREENSHOTS=1 to refresh
docs/audience-builder.png."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bench.receiver import Receiver
from pipelines.lakehouse.catalog import PROFILES
from tests.api.conftest import may_use
from tests.conftest import screenshot_path

pytestmark = [pytest.mark.api, pytest.mark.e2e]
NAME = "Browser audience: churn risk 0.2+"


def test_build_count_save_and_push_a_segment_in_the_page(
    served: dict[str, Any], receiver: Receiver, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served['server'].url}/ui")
    page.get_by_label("Marketing API key").fill(served["keys"]["marketing"])
    page.get_by_role("button", name="Use key").click()
    page.get_by_role("heading", name="Define").wait_for()

    page.get_by_label("Name", exact=True).fill(NAME)
    page.get_by_role("button", name="Add condition").click()
    page.get_by_label("Condition 1 attribute").select_option("value_segment")
    page.get_by_label("Condition 1 operator").select_option("is_not_null")
    page.get_by_role("button", name="Add condition").click()
    page.get_by_label("Condition 2 attribute").select_option("churn_risk")
    page.get_by_label("Condition 2 operator").select_option(">=")
    page.get_by_label("Condition 2 value").fill("0.2")
    # changing an operator swaps the value inputs; the page used to throw here
    page.get_by_label("Condition 2 operator").select_option("between")
    page.get_by_label("Condition 2 from").fill("0.1")
    page.get_by_label("Condition 2 operator").select_option(">=")
    page.get_by_label("Condition 2 value").fill("0.2")

    profiles = served["lake"].read_polars(PROFILES)
    # churn_risk decides only for persons who may be profiled (conf/policy.yaml)
    matching = profiles.filter(
        pl.col("value_segment").is_not_null()
        & may_use(served, "value_segment")
        & (pl.col("churn_risk") >= 0.2)
        & may_use(served, "churn_risk")
    )
    reachable = matching.filter(pl.col("consent_marketing_granted").fill_null(False))
    assert reachable.height > 0
    page.wait_for_function(
        "n => document.getElementById('members')?.textContent === n",
        arg=f"{matching.height:,}",
    )
    assert page.locator("#reachable").text_content() == f"{reachable.height:,}"
    assert page.locator("#chart rect").count() == 10
    # every bar is inside its panel, the last (0.9-1.0) too: none cut off
    panel = page.locator("section", has=page.locator("#chart")).bounding_box()
    last = page.locator("#chart rect").nth(9).bounding_box()
    assert panel and last and last["x"] + last["width"] <= panel["x"] + panel["width"]

    page.get_by_role("button", name="Save").click()
    page.get_by_text("Saved as seg_").wait_for()
    page.get_by_label("Channel").select_option("sms_campaigns")
    page.get_by_role("button", name="Push to channel").click()
    page.locator("#pushes tbody td", has_text="delivered").wait_for(timeout=30_000)
    page.get_by_role("status").filter(has_text="exited; delivered.").wait_for()
    page.screenshot(path=str(screenshot_path(tmp_path, "audience-builder.png")), full_page=True)

    _export_and_page_through_pushes(page, set(reachable["person_id"]))
    assert errors == [], errors

    deadline = time.monotonic() + 10
    parts = []
    while not parts and time.monotonic() < deadline:
        parts = [r for r in receiver.at("/push", 200) if r.json()["segment"]["name"] == NAME]
        time.sleep(0.05)
    assert parts and all(r.signed for r in parts)
    entered = {p["person_id"] for r in parts for p in r.json()["entered"]}
    assert entered == set(reachable["person_id"])
    assert parts[0].json()["channel"] == "sms_campaigns"


def _export_and_page_through_pushes(page: Any, reachable: set[str]) -> None:
    """The export downloads the reachable members as the channel may see them; past pushes
    page by ten."""
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.reader(io.StringIO(download.value.path().read_text())))
    assert rows[0][0] == "person_id"
    assert {r[0] for r in rows[1:]} == reachable
    for n in range(2, 12):
        page.get_by_role("button", name="Push to channel").click()
        page.get_by_text(f"({n} pushes)").wait_for(timeout=30_000)
    assert page.locator("#pushes tbody tr").count() == 10
    page.get_by_role("button", name="Older").click()
    page.get_by_text("Page 2 of 2 (11 pushes)").wait_for()
    assert page.locator("#pushes tbody tr").count() == 1


def test_the_page_refuses_a_key_that_is_not_for_marketing(
    served: dict[str, Any], browser: Any
) -> None:
    page = browser.new_page()
    page.goto(f"{served['server'].url}/ui")
    page.get_by_label("Marketing API key").fill(served["keys"]["mobile_app"])
    page.get_by_role("button", name="Use key").click()
    page.get_by_text("Key refused").wait_for()
    assert page.locator("#app").is_hidden()


def test_api_docs_open_offline_under_a_csp_without_inline_script(
    served: dict[str, Any], browser: Any
) -> None:
    """/docs and /redoc render every route with nothing fetched from outside the server and no
    script refused by the Content-Security-Policy; every page sends the security headers."""
    base = served["server"].url
    for path in ("/docs", "/redoc", "/ui"):
        headers = served["client"].get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
    page = browser.new_page()
    outside: list[str] = []
    refused: list[str] = []

    def local_only(route: Any) -> None:
        if route.request.url.startswith(base) or route.request.url.startswith("blob:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    # A refused script would break the page; Redoc's logo, an image on its CDN, is blocked by the
    # same policy and simply not shown.
    page.on(
        "console",
        lambda m: (
            refused.append(m.text) if "Content Security" in m.text and "script" in m.text else None
        ),
    )
    page.goto(f"{base}/docs")
    page.get_by_text("/v1/profiles/msisdn/{id_value}").first.wait_for(timeout=30_000)
    page.goto(f"{base}/redoc")
    page.get_by_text("Consent-aware profile lookups").first.wait_for(timeout=30_000)
    page.close()
    assert outside == [] and refused == [], (outside, refused)
