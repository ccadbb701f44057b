"""The browser tests' shared pieces: a real `bnlab serve`, the hang guard of every wait, and
waits for a job (over HTTP) and for a chart (in the page)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from devtools.poll import poll_until
from devtools.procs import embedded_serve

WAIT_MS = 240_000  # hang guards for a loaded CI machine; nothing here measures speed
TERMINAL = ("succeeded", "failed", "cancelled")


@contextlib.contextmanager
def serve(home: Path, **env: str) -> Iterator[str]:
    """A real `bnlab serve` (see embedded_serve); `env` adds settings (e.g. BNLAB_API_KEYS).
    Yields the base URL."""
    # show_logs (its default) named, else mypy matches **env against that bool
    with embedded_serve(home, show_logs=True, **env) as (base_url, _):
        yield base_url


def wait_done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = poll_until(lambda: client.get(f"/v1/jobs/{job_id}").json(),
                                     lambda job: job["status"] in TERMINAL,
                                     what=f"finish of job {job_id}", timeout=WAIT_MS / 1000,
                                     interval=0.2)
    return job


def wait_points(page: Any, testid: str, op: str, n: int, timeout: int = 30_000) -> None:
    """Wait until the chart's plotted epoch count compares to n (op: '>=', '>' or '===')."""
    page.wait_for_function(
        "([testid, op, n]) => { const el = document.querySelector(`[data-testid=${testid}]`);"
        " const p = el ? +el.dataset.points : -1;"
        " return op === '>' ? p > n : op === '>=' ? p >= n : p === n; }",
        arg=[testid, op, n], timeout=timeout)
