"""Browser tests: Debian's chromium (/usr/bin/chromium) driven by playwright, against a real
`bnlab serve` (embedded SQLite + its real Celery worker).

playwright never downloads a browser here: `executable_path` points at the system chromium.
Under CI=true a missing chromium or playwright fails the run; elsewhere these tests skip.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.procs import Hold
from tests.support.dashboard import serve
from tests.support.services import unavailable

CHROMIUM = os.environ.get("BNLAB_CHROMIUM", "/usr/bin/chromium")



@pytest.fixture(scope="session")
def chromium() -> str:
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which(CHROMIUM)):
        unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@pytest.fixture(scope="module")
def hold(tmp_path_factory: pytest.TempPathFactory) -> Hold:
    """`server`'s worker holds every job after its first epoch until `hold.release(job_id)`
    (the first epoch is always written on its own): a page sees a job run, not just end."""
    return Hold(tmp_path_factory.mktemp("hold"), 1)


@pytest.fixture(scope="module")
def server(chromium: str,  # noqa: ARG001 (requested for its check)
           hold: Hold, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # depends on chromium: no server is started for a browser that is not there
    with serve(tmp_path_factory.mktemp("dashboard"), **hold.env()) as base_url:
        yield base_url


@pytest.fixture
def console_allow() -> list[str]:
    """Regexes of console errors a test expects (e.g. the 401 that makes the page ask for a
    key); every other console error fails it."""
    return []


@pytest.fixture
def screenshots(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """$BNLAB_ARTIFACTS/e2e/<test> (kept by CI), else tmp_path/screenshots."""
    root = os.environ.get("BNLAB_ARTIFACTS")
    folder = Path(root) / "e2e" / request.node.name if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture
def page(chromium: str, console_allow: list[str]) -> Iterator[Any]:
    """A fresh page; a console error (other than `console_allow`) or an uncaught page error
    fails the test."""
    from playwright.sync_api import expect, sync_playwright

    # Hang guards, as the page's own: a loaded machine renders slowly, never wrongly.
    expect.set_options(timeout=30_000)

    problems: list[str] = []
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        def on_console(m: Any) -> None:
            if m.type == "error" and not any(re.search(a, m.text) for a in console_allow):
                problems.append(f"console.error: {m.text} at {m.location}")

        pg.on("console", on_console)
        pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        try:
            yield pg
        finally:
            context.close()
            browser.close()
    assert not problems, "JavaScript errors:\n" + "\n".join(problems)
