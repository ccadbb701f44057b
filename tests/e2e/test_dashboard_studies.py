"""The Studies view in a real browser against a real server and worker: start a tiny study from
the form (a base without BatchNorm is refused first), see it partial while its runs are held,
find it in the list with a progress bar per claim, then, once its runs finish, a card per claim
with a verdict badge, numbers and a chart, report links that serve, and a link to the claim's
experiment. Nothing here sleeps to synchronise: every wait is for a DOM condition.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.procs import Hold
from tests.support.dashboard import WAIT_MS

pytestmark = pytest.mark.integration

CLAIMS = ["regularization", "placement"]
BASE = {"dataset": {"name": "moons", "n_samples": 120},
        "network": {"hidden": [4], "batchnorm": "before_activation"},
        "training": {"epochs": 2}}
VERDICTS = ("supported", "contradicted", "inconclusive")


@pytest.fixture
def console_allow() -> list[str]:
    # the refused submission: chromium logs the 422 answer of its fetch
    return [r"status of 422"]


def test_studies_view(server: str, hold: Hold, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    shot = 0

    def snap(name: str) -> None:
        nonlocal shot
        shot += 1
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(screenshots / f"{shot:02d}-{name}.png"), full_page=True)

    client = httpx.Client(base_url=server, timeout=30)

    # -- the nav entry opens an empty list
    page.goto(f"{server}/")
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    page.get_by_test_id("nav-studies").click()
    page.wait_for_url("**/#/studies")
    expect(page.get_by_test_id("nav-studies")).to_have_class(re.compile(r"\bactive\b"))
    expect(page.get_by_test_id("studies-table")).to_be_visible()
    expect(page.get_by_text("No studies yet.")).to_be_visible()

    # -- the form: a base without BatchNorm is refused with the server's reason
    page.get_by_test_id("study-form-wrap").locator("summary").click()
    form = page.get_by_test_id("study-form")
    form.get_by_test_id("sf-name").fill("e2e-study")
    form.get_by_test_id("sf-seeds").fill("2")
    for box in form.locator("input[type=checkbox]").all():
        if box.get_attribute("value") not in CLAIMS:
            box.uncheck()
    no_bn = {**BASE, "network": {"hidden": [4]}}
    form.get_by_test_id("sf-base").fill(json.dumps(no_bn))
    form.get_by_test_id("sf-submit").click()
    expect(form.get_by_test_id("study-form-error")).to_contain_text("BatchNorm")
    assert client.get("/v1/studies").json()["items"] == []

    # -- the tiny study: two claims, two seeds; every run is held after its first epoch
    form.get_by_test_id("sf-base").fill(json.dumps(BASE))
    form.get_by_test_id("sf-submit").click()
    page.wait_for_url("**/#/studies/*")
    study_id = page.url.rsplit("/", 1)[1]
    study = client.get(f"/v1/studies/{study_id}").json()
    assert [c["claim"] for c in study["claims"]] == CLAIMS
    assert study["spec"]["seeds"] == 2
    assert study["spec"]["base"]["dataset"]["name"] == "moons"
    expect(page.get_by_test_id("study-name")).to_have_text("e2e-study")
    cards = page.get_by_test_id("claim-card")
    expect(cards).to_have_count(2)
    for claim in CLAIMS:
        card = page.locator(f"[data-testid=claim-card][data-claim={claim}]")
        expect(card.get_by_test_id("claim-text")).not_to_be_empty()
        exp_id = next(c["experiment_id"] for c in study["claims"] if c["claim"] == claim)
        expect(card.get_by_test_id("claim-experiment")).to_have_attribute(
            "href", f"#/experiments/{exp_id}")
    # while nothing can finish, every verdict is provisional: marked partial
    expect(page.locator("[data-testid=claim-card] [data-testid=partial]")).to_have_count(
        2, timeout=WAIT_MS)
    expect(page.get_by_test_id("report-note")).to_contain_text("Partial report")
    # a held run has stored its first epoch: its claim's chart draws the runs in progress
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=claim-chart]')]"
        ".some(el => el.dataset.points === '1')", timeout=WAIT_MS)
    snap("study-running")

    # -- the list: the study with a progress bar per claim
    page.get_by_test_id("nav-studies").click()
    row = page.locator(f"[data-testid=study-row][data-study-id='{study_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("e2e-study")
    expect(row.get_by_test_id("claim-progress")).to_have_count(2)
    for claim in CLAIMS:
        expect(row.locator(f"[data-testid=claim-progress][data-claim={claim}]")).to_be_visible()
    snap("studies-list")

    # -- let every run finish
    for c in study["claims"]:
        for child in client.get(f"/v1/experiments/{c['experiment_id']}").json()["children"]:
            hold.release(child["job_id"])
    row.get_by_role("link", name="e2e-study").click()
    page.wait_for_url(f"**/#/studies/{study_id}")
    expect(page.locator(".page-head [data-testid=status]")).to_have_attribute(
        "data-status", "succeeded", timeout=WAIT_MS)
    expect(page.locator("[data-testid=claim-card] [data-testid=partial]")).to_have_count(
        0, timeout=WAIT_MS)
    report = client.get(f"/v1/studies/{study_id}/report").json()
    assert report["partial"] is False
    for claim in CLAIMS:
        card = page.locator(f"[data-testid=claim-card][data-claim={claim}]")
        verdict = next(c for c in report["claims"] if c["claim"] == claim)["verdict"]
        assert verdict in VERDICTS
        expect(card.get_by_test_id("verdict")).to_have_attribute("data-verdict", verdict)
        expect(card.get_by_test_id("verdict")).to_have_text(verdict)
        expect(card.get_by_test_id("claim-n")).to_have_text("2")
        expect(card.get_by_test_id("claim-effect")).not_to_be_empty()
        expect(card.get_by_test_id("claim-reason")).not_to_be_empty()
        if verdict == "inconclusive":
            expect(card.get_by_test_id("claim-firm-up")).to_contain_text("seeds")
        # the claim's chart: the experiment's two epochs
        expect(card.get_by_test_id("claim-chart")).to_have_attribute("data-points", "2",
                                                                      timeout=WAIT_MS)
    expect(page.get_by_test_id("report-note")).not_to_contain_text("Partial")

    # -- the report links serve the study's report
    for ext, kind in (("html", "text/html"), ("md", "text/markdown")):
        href = page.get_by_test_id(f"report-{ext}").get_attribute("href")
        assert href == f"/v1/studies/{study_id}/report.{ext}"
        r = client.get(href)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(kind), r.text
    snap("study-done")

    # -- a claim's experiment link opens its experiment
    placement = next(c for c in study["claims"] if c["claim"] == "placement")
    page.locator("[data-testid=claim-card][data-claim=placement]").get_by_test_id(
        "claim-experiment").click()
    page.wait_for_url(f"**/#/experiments/{placement['experiment_id']}")
    expect(page.get_by_test_id("experiment-name")).to_contain_text("placement")
    expect(page.locator("[data-testid=child-cell][data-status=succeeded]")).to_have_count(4)
    expect(page.get_by_test_id("nav-experiments")).to_have_class(re.compile(r"\bactive\b"))

    client.close()
