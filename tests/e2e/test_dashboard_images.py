"""The job page for data beyond 2-D, in a real browser against a real server and worker: an image
job (a small CNN on digits) shows its validation images with true and predicted classes, the
confusion matrix and one BN chart line per channel, live while it runs and at its end; a
4-feature table shows the confusion matrix and per-unit BN charts, and no decision boundary.
The worker holds each job after its first epoch (tests/e2e/conftest.py's `hold`), so what the
page shows mid-training is certain however fast the machine is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.procs import Hold
from tests.support.dashboard import WAIT_MS, wait_done

pytestmark = pytest.mark.integration

EPOCHS = 4
TRAINING = {"epochs": EPOCHS, "batch_size": 64, "validation_split": 0.2, "split": "stratified",
            "seed": 1, "optimizer": {"name": "adam", "lr": 0.01}}


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def confusion(page: Any) -> list[list[int]]:
    return list(page.evaluate("""() => [...document.querySelectorAll(
        '[data-testid=confusion-matrix] [data-testid=confusion-row]')].map((tr) =>
        [...tr.querySelectorAll('[data-testid=confusion-cell]')]
          .map((td) => +td.dataset.count))"""))


def test_image_job_page(server: str, hold: Hold, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    client = httpx.Client(base_url=server, timeout=30)
    job_id = submit(client, {
        "name": "e2e-digits", "dataset": {"name": "digits"},
        "network": {"conv": [4, 8], "pool": "max", "hidden": [16],
                    "batchnorm": "before_activation"},
        "training": TRAINING})
    page.goto(f"{server}/#/jobs/{job_id}")
    expect(page.get_by_test_id("job-name")).to_have_text("e2e-digits")
    status = page.locator(".page-head [data-testid=status]")
    card = page.get_by_test_id("validation-card")

    # -- held after epoch 1: the page shows that epoch's validation predictions while it runs
    expect(card).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_test_id("boundary-card")).to_be_hidden()
    expect(card).to_have_attribute("data-epoch", "1", timeout=WAIT_MS)
    expect(status).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    assert hold.is_held(job_id)
    expect(page.get_by_test_id("val-image")).to_have_count(64)
    page.screenshot(path=str(screenshots / "01-image-job-running.png"), full_page=True)

    # -- the end: the last checkpoint's predictions, the job's own final val_accuracy
    hold.release(job_id)
    expect(status).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    job = wait_done(client, job_id)
    assert job["status"] == "succeeded", job
    expect(card).to_have_attribute("data-epoch", str(EPOCHS), timeout=WAIT_MS)
    shown = float(card.get_attribute("data-accuracy") or "nan")
    assert abs(shown - job["final_metrics"]["val_accuracy"]) < 1e-6

    matrix = page.get_by_test_id("confusion-matrix")
    expect(matrix).to_have_attribute("data-classes", "10")
    expect(matrix).to_have_attribute("data-total", "360")  # 20% of digits' 1,797 rows
    counts = confusion(page)
    assert len(counts) == 10
    assert all(len(row) == 10 for row in counts)
    assert sum(map(sum, counts)) == 360
    correct = sum(counts[i][i] for i in range(10))
    assert abs(correct / 360 - shown) < 1e-9
    expect(page.get_by_test_id("validation-accuracy")).to_contain_text(f"{correct} of 360")

    # -- the image grid: 64 decoded 8x8 tiles, each with its true and predicted class, the
    # mistakes outlined (and only them)
    tiles = page.get_by_test_id("val-image")
    expect(tiles).to_have_count(64)
    page.wait_for_function("""() => [...document.querySelectorAll('[data-testid=val-image] img')]
        .every((img) => img.complete && img.naturalWidth === 8 && img.naturalHeight === 8)""")
    facts = page.evaluate("""() => [...document.querySelectorAll('[data-testid=val-image]')]
        .map((f) => ({label: +f.dataset.label, predicted: +f.dataset.predicted,
                      correct: f.dataset.correct === 'true', wrong: f.classList.contains('wrong'),
                      caption: f.querySelector('figcaption').textContent}))""")
    for f in facts:
        assert f["correct"] == (f["label"] == f["predicted"])
        assert f["wrong"] == (not f["correct"])
        assert f["caption"].startswith(str(f["label"]))
        assert f["caption"].endswith("✓" if f["correct"] else f"→ {f['predicted']}")
    page.get_by_test_id("images-card").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "02-image-job-done.png"), full_page=True)

    # -- mistakes only: every tile shown is one (or none are left to show)
    page.get_by_test_id("images-choice").locator("[data-value=mistakes]").click()
    expect(page.get_by_test_id("images-note")).to_contain_text("mistakes")
    wrong = 360 - correct
    if wrong:
        expect(page.locator("[data-testid=val-image][data-correct=false]")).to_have_count(
            min(64, wrong))
        expect(page.locator("[data-testid=val-image][data-correct=true]")).to_have_count(0)
    else:
        expect(page.get_by_test_id("val-images-empty")).to_be_visible()
    page.get_by_test_id("images-choice").locator("[data-value=all]").click()
    expect(tiles).to_have_count(64)

    # -- the best checkpoint's predictions on request
    page.get_by_test_id("validation-checkpoint").locator("[data-value=best]").click()
    expect(page.get_by_test_id("validation-note")).to_contain_text(
        f"best checkpoint, epoch {job['best_epoch']}")

    # -- BN: one chart per statistic and layer, one line per channel, a point per epoch
    layers = page.get_by_test_id("bn-layer")
    expect(layers).to_have_count(3)
    assert [layers.nth(i).get_attribute("data-channels") for i in range(3)] == ["4", "8", "16"]
    means = page.get_by_test_id("bn-ch-running_mean")
    expect(means).to_have_count(3)
    expect(page.get_by_test_id("bn-ch-gamma")).to_have_count(3)
    for i, n in enumerate(("4", "8", "16")):
        expect(means.nth(i)).to_have_attribute("data-series", n)
        expect(means.nth(i)).to_have_attribute("data-points", str(EPOCHS))
    page.get_by_test_id("bn-card").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "03-image-job-bn.png"), full_page=True)

    # -- a prediction from 64 comma-separated pixel values, sent as a 1x8x8 image
    pixels = ", ".join(str((i * 7) % 17) for i in range(64))
    page.get_by_test_id("predict-input").fill(pixels)
    page.get_by_test_id("predict-submit").click()
    expect(page.get_by_test_id("predict-output").locator("tbody tr")).to_have_count(1)


def test_wide_table_job_page(server: str, hold: Hold, page: Any, screenshots: Path) -> None:
    from playwright.sync_api import expect

    client = httpx.Client(base_url=server, timeout=30)
    job_id = submit(client, {
        "name": "e2e-blobs4",
        "dataset": {"name": "blobs", "n_samples": 300, "n_features": 4, "n_classes": 3},
        "network": {"hidden": [8], "batchnorm": "after_activation"},
        "training": {**TRAINING, "split": "random"}})
    hold.release(job_id)
    job = wait_done(client, job_id)
    assert job["status"] == "succeeded", job

    page.goto(f"{server}/#/jobs/{job_id}")
    card = page.get_by_test_id("validation-card")
    expect(card).to_have_attribute("data-epoch", str(EPOCHS), timeout=WAIT_MS)
    expect(page.get_by_test_id("boundary-card")).to_be_hidden()
    expect(page.get_by_test_id("images-card")).to_be_hidden()
    matrix = page.get_by_test_id("confusion-matrix")
    expect(matrix).to_have_attribute("data-classes", "3")
    expect(matrix).to_have_attribute("data-total", "60")
    counts = confusion(page)
    assert len(counts) == 3
    assert sum(map(sum, counts)) == 60
    shown = float(card.get_attribute("data-accuracy") or "nan")
    assert abs(shown - job["final_metrics"]["val_accuracy"]) < 1e-6

    layer = page.get_by_test_id("bn-layer")
    expect(layer).to_have_count(1)
    expect(layer).to_have_attribute("data-channels", "8")
    expect(page.get_by_test_id("bn-ch-running_var")).to_have_attribute("data-series", "8")
    expect(page.get_by_test_id("bn-ch-running_var")).to_have_attribute("data-points",
                                                                      str(EPOCHS))
    page.screenshot(path=str(screenshots / "wide-table-job.png"), full_page=True)
