"""The dashboard with authentication on: it asks for the key once, keeps it for the tab, and
sends it on every request, the event stream and downloads included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dashboard import WAIT_MS, serve, wait_points

pytestmark = pytest.mark.integration

KEY = "bnlab_e2e-dashboard-key-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_server(chromium: str,  # noqa: ARG001 (requested for its check)
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("dashboard-auth"), BNLAB_API_KEYS=KEY) as base_url:
        yield base_url


def test_dashboard_asks_for_the_key(auth_server: str, page: Any, console_allow: list[str],
                                    screenshots: Path) -> None:
    from playwright.sync_api import expect

    console_allow.append(r"status of 401")  # the refusals that make the page ask
    with httpx.Client(base_url=auth_server, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert httpx.get(f"{auth_server}/v1/jobs").status_code == 401  # auth is really on
        r = client.post("/v1/jobs", json={
            "name": "e2e-auth", "dataset": {"name": "concentric_circles", "n_samples": 300},
            "network": {"hidden": [4], "batchnorm": "after_activation"},
            "training": {"epochs": 5, "split": "random"}})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

    page.goto(f"{auth_server}/")
    dialog = page.get_by_test_id("auth-dialog")
    expect(dialog).to_be_visible()
    page.get_by_test_id("auth-key").fill("not-the-key")
    page.get_by_test_id("auth-submit").click()
    expect(dialog).to_contain_text("refused")
    page.screenshot(path=str(screenshots / "auth-dialog.png"))
    page.get_by_test_id("auth-key").fill(KEY)
    page.get_by_test_id("auth-submit").click()
    expect(dialog).to_be_hidden()
    row = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
    expect(row).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('bnlab.apiKey')") == KEY

    # the job page's event stream, /history, /bn and /boundary all carry the key
    row.get_by_test_id("job-link").click()
    wait_points(page, "chart-loss", "===", 5, WAIT_MS)
    expect(page.get_by_test_id("boundary-canvas")).to_have_attribute("data-epoch", "5",
                                                                     timeout=WAIT_MS)
    expect(page.get_by_test_id("bn-layer")).to_have_count(1)

    # a download cannot be a plain link with auth on: the page fetches it with the key
    with page.expect_download() as info:
        page.get_by_test_id("download-last").click()
    assert info.value.suggested_filename.endswith(".safetensors")
    assert Path(info.value.path()).read_bytes()[8:9] == b"{"  # safetensors: u64 size, JSON

    # the key lasts for the tab: a reload does not ask again
    page.reload()
    expect(page.get_by_test_id("job-name")).to_have_text("e2e-auth")
    expect(dialog).to_be_hidden()
    page.screenshot(path=str(screenshots / "auth-job.png"), full_page=True)
