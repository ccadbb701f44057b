"""Background threads of a worker's main process: its heartbeat row and broker clean-up.

They run in the Celery main process (started on `worker_ready`), not in the pool children:
the heartbeat says "this node is alive and serves these queues", which is what the API needs
to route `device: auto` to the `gpu` queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from models.db.errors import driver_message, is_transient

log = logging.getLogger(__name__)


class Periodic(threading.Thread):
    """Call `fn` now and then every `interval` seconds until `stop()`; errors are logged."""

    def __init__(self, name: str, interval: float, fn: Callable[[], object]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.fn = fn
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.fn()
            except Exception as exc:  # a flaky database must not kill the thread
                # An outage is one line a tick (its cause); anything else is a bug: traced.
                log.warning("%s failed (%s); retrying in %.1fs", self.name, driver_message(exc),
                            self.interval, exc_info=not is_transient(exc))
            if self._stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self._stopped.set()


def worker_device(queues: list[str]) -> str:
    """What this node can offer the API's `device: auto` routing: "cuda" or "cpu".

    Only a node that consumes `gpu` and sees a GPU says "cuda". The main process forks the
    pool later, so it asks NVML (no CUDA context); the task still picks the real device.
    """
    if "gpu" not in queues:
        return "cpu"
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def clean_processed(folder: Path, *, older_than: float, now: float | None = None) -> int:
    """Delete processed broker message files older than `older_than` seconds; returns count."""
    cutoff = (now if now is not None else time.time()) - older_than
    removed = 0
    for path in folder.glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another worker cleaned it first
            continue
    if removed:
        log.info("removed %d processed broker message files from %s", removed, folder)
    return removed
