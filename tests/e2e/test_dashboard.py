"""The dashboard in a real browser against a real server and worker: submit a job from the form,
watch its curves grow live, read its decision boundary, BN statistics and a prediction, compare
two jobs, open an experiment. Screenshots of each view are kept; no JavaScript error may occur.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.procs import Hold
from tests.support.dashboard import WAIT_MS, wait_done, wait_points

pytestmark = pytest.mark.integration

EPOCHS = 30
# 20k rows: an epoch takes a few hundred ms, so the curve is seen growing epoch by epoch
SAMPLES = 20_000


def points(page: Any, testid: str) -> int:
    return int(page.get_by_test_id(testid).get_attribute("data-points"))


def canvas_colours(page: Any) -> dict[str, int]:
    """Pixels of the boundary canvas: drawn at all, and how many lean blue or orange (the two
    classes' colours)."""
    return dict(page.evaluate("""() => {
        const c = document.querySelector('[data-testid=boundary-canvas]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let ink = 0, blue = 0, orange = 0;
        for (let i = 0; i < d.length; i += 4) {
            const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
            if (a === 0 || (r > 245 && g > 245 && b > 245)) continue;
            ink++;
            if (b > r + 40) blue++;
            if (r > b + 40) orange++;
        }
        return {total: d.length / 4, ink, blue, orange};
    }"""))


def test_dashboard(server: str, hold: Hold, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    shot = 0

    def snap(name: str) -> None:
        nonlocal shot
        shot += 1
        page.evaluate("window.scrollTo(0, 0)")  # a sticky top bar lands mid-page otherwise
        page.screenshot(path=str(screenshots / f"{shot:02d}-{name}.png"), full_page=True)

    client = httpx.Client(base_url=server, timeout=30)

    # -- the jobs view is the landing page
    page.goto(f"{server}/")
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    expect(page.get_by_test_id("nav-jobs")).to_have_class("active")

    # -- submit a job from the form; the JSON beside it follows every field
    page.get_by_test_id("nav-submit").click()
    form = page.get_by_test_id("submit-form")
    expect(form.get_by_test_id("f-param-n_samples")).to_be_visible()  # generators loaded
    form.get_by_test_id("f-name").fill("e2e-bn")
    form.get_by_test_id("f-param-n_samples").fill(str(SAMPLES))
    form.get_by_test_id("f-hidden").fill("8, 4")
    form.get_by_test_id("f-batchnorm").select_option("after_activation")
    form.get_by_test_id("f-epochs").fill(str(EPOCHS))
    form.get_by_test_id("f-lr").fill("0.01")
    sent = json.loads(page.get_by_test_id("spec-preview").inner_text())
    assert sent["name"] == "e2e-bn"
    assert sent["dataset"] == {"name": "concentric_circles", "n_samples": SAMPLES, "noise": 0.1,
                               "seed": 0, "factor": 0.5}
    assert sent["network"] == {"hidden": [8, 4], "activation": "relu",
                               "batchnorm": "after_activation"}
    assert sent["training"]["epochs"] == EPOCHS
    assert sent["training"]["optimizer"] == {"name": "adam", "lr": 0.01}
    snap("submit-form")
    form.get_by_test_id("submit-job").click()
    page.wait_for_url("**/#/jobs/*")
    bn_id = page.url.rsplit("/", 1)[1]
    expect(page.get_by_test_id("job-name")).to_have_text("e2e-bn")

    # -- its loss curve grows while it trains (live from the event stream): the worker holds
    # it after epoch 1 until the page has drawn that epoch
    wait_points(page, "chart-loss", ">=", 1, WAIT_MS)
    first = points(page, "chart-loss")
    assert first == 1, f"{first} epochs shown while the job waits after its first"
    expect(page.locator(".page-head [data-testid=status]")).to_have_attribute(
        "data-status", "running", timeout=WAIT_MS)
    hold.release(bn_id)
    wait_points(page, "chart-loss", ">", first, WAIT_MS)
    assert points(page, "chart-loss") > first
    snap("job-running")

    # -- done: every epoch exactly once, on both charts
    expect(page.locator(".page-head [data-testid=status]")).to_have_attribute(
        "data-status", "succeeded", timeout=WAIT_MS)
    wait_points(page, "chart-accuracy", "===", EPOCHS)
    assert points(page, "chart-loss") == EPOCHS
    assert client.get(f"/v1/jobs/{bn_id}").json()["status"] == "succeeded"

    # -- decision boundary: drawn at the final epoch, both classes' colours on the canvas
    canvas = page.get_by_test_id("boundary-canvas")
    expect(canvas).to_have_attribute("data-epoch", str(EPOCHS), timeout=WAIT_MS)
    px = canvas_colours(page)
    assert px["ink"] > 0.9 * px["total"], px  # a heatmap covers the canvas
    assert px["blue"] > 0.05 * px["total"], px
    assert px["orange"] > 0.05 * px["total"], px
    page.get_by_test_id("checkpoint-choice").locator("[data-value=best]").click()
    expect(page.get_by_test_id("boundary-note")).to_contain_text("best checkpoint")

    # -- BatchNorm statistics: two BN layers, a point per epoch
    expect(page.get_by_test_id("bn-layer")).to_have_count(2)
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=bn-running_mean]')]"
        ".every(el => +el.dataset.points === n)", arg=EPOCHS)

    # -- model summary and a prediction in eval mode
    expect(page.get_by_test_id("model-table")).to_contain_text("batchnorm")
    page.get_by_test_id("predict-input").fill("0, 0\n1.5, 1.5")
    page.get_by_test_id("predict-submit").click()
    expect(page.get_by_test_id("predict-output").locator("tbody tr")).to_have_count(2)
    expect(page.get_by_test_id("download-best")).to_have_attribute(
        "href", f"/v1/jobs/{bn_id}/checkpoints/best")
    page.get_by_test_id("boundary-card").scroll_into_view_if_needed()
    snap("job-done")

    # -- a second job (no BN) through the API, then compare the two from the jobs table
    plain = client.post("/v1/jobs", json={
        "name": "e2e-plain", "dataset": {"name": "concentric_circles", "n_samples": 400},
        "network": {"hidden": [8, 4]}, "training": {"epochs": 10, "split": "random"}})
    assert plain.status_code == 202, plain.text
    plain_id = plain.json()["id"]
    hold.release(plain_id)
    assert wait_done(client, plain_id)["status"] == "succeeded"
    page.get_by_test_id("nav-jobs").click()
    for job_id in (bn_id, plain_id):
        row = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
        expect(row.get_by_test_id("status")).to_have_attribute("data-status", "succeeded")
        row.locator("input[type=checkbox]").check()
    page.get_by_test_id("compare-selected").click()
    page.wait_for_url("**/#/compare?*")
    assert bn_id in page.url
    assert plain_id in page.url
    chart = page.get_by_test_id("compare-chart")
    expect(chart).to_have_attribute("data-series", "2")
    expect(chart).to_have_attribute("data-points", str(EPOCHS))  # union of 30 and 10 epochs
    page.get_by_test_id("compare-metric").select_option("val_loss")
    assert "metric=val_loss" in page.url
    expect(chart).to_have_attribute("data-series", "2")
    snap("compare")

    # -- an experiment: mean curves with bands per variant, statistics, children grid
    exp = client.post("/v1/experiments", json={
        "name": "e2e-placement",
        "base": {"dataset": {"name": "concentric_circles", "n_samples": 300},
                 "network": {"hidden": [4]}, "training": {"epochs": 5, "split": "random"}},
        "variants": {"network.batchnorm": ["none", "after_activation"]}, "seeds": 2})
    assert exp.status_code == 202, exp.text
    exp_id = exp.json()["id"]
    for child in client.get(f"/v1/experiments/{exp_id}").json()["children"]:
        hold.release(child["job_id"])
    page.get_by_test_id("nav-experiments").click()
    page.get_by_test_id("experiment-row").filter(has_text="e2e-placement").get_by_role(
        "link").click()
    page.wait_for_url(f"**/#/experiments/{exp_id}")
    expect(page.get_by_test_id("experiment-name")).to_have_text("e2e-placement")
    cells = page.get_by_test_id("child-cell")
    expect(cells).to_have_count(4)
    expect(page.locator("[data-testid=child-cell][data-status=succeeded]")).to_have_count(
        4, timeout=WAIT_MS)
    expect(page.get_by_test_id("experiment-chart")).to_have_attribute("data-series", "2",
                                                                      timeout=WAIT_MS)
    expect(page.get_by_test_id("experiment-chart")).to_have_attribute("data-points", "5")
    expect(page.get_by_test_id("variant-table").locator("tbody tr")).to_have_count(2)
    expect(page.get_by_test_id("pairs-table").locator("tbody tr")).to_have_count(1)
    snap("experiment")

    client.close()
