"""Test seam, off by default: hold every job after one epoch is stored until a file says go.

With BNLAB_TEST_HOLD_EPOCH=N and BNLAB_TEST_HOLD_DIR=<dir> set, a worker's training, right
after job J's epoch N row is committed, creates <dir>/<J>@<N>.held and waits until
<dir>/<J>@<N>.go exists. The integration tests use it to act on a job that is certainly still
running (kill or stop its worker, cancel it, flush the broker) however fast or slow the
machine is, instead of racing a short job. Its lease keeps being renewed meanwhile, and a
signal still reaches the worker. Never set in production: nothing reads these files otherwise.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from worker.callbacks import EpochWritten

log = logging.getLogger(__name__)


def held_file(folder: Path, job_id: str, epoch: int) -> Path:
    return folder / f"{job_id}@{epoch}.held"


def go_file(folder: Path, job_id: str, epoch: int) -> Path:
    return folder / f"{job_id}@{epoch}.go"


def epoch_hold(folder: Path | None, epoch: int | None, *, poll_s: float = 0.02
               ) -> EpochWritten | None:
    """The RunContext.on_epoch_written hook that holds at `epoch`; None unless both are set."""
    if folder is None or epoch is None:
        return None

    def hold(job_id: str, written: int) -> None:
        if written != epoch:
            return
        go = go_file(folder, job_id, epoch)
        held_file(folder, job_id, epoch).touch()
        if go.exists():
            return
        log.warning("test seam: job %s held after epoch %d until %s exists", job_id, epoch, go)
        while not go.exists():
            time.sleep(poll_s)
        log.warning("test seam: job %s goes on after epoch %d", job_id, epoch)

    return hold


def sweeps_file(folder: Path, pid: int) -> Path:
    return folder / f"sweeps-{pid}"


def counted_sweeps(folder: Path | None, sweep: Callable[[], object]) -> Callable[[], object]:
    """The reaper's sweep, and with the seam on (a hold folder set) the count of sweeps done so
    far in <dir>/sweeps-<pid> after each one: a test that asserts the reaper leaves a job alone
    waits for sweeps, not for a guessed number of seconds."""
    if folder is None:
        return sweep
    path, count = sweeps_file(folder, os.getpid()), 0

    def counted() -> object:
        nonlocal count
        result = sweep()
        count += 1
        part = path.with_name(path.name + ".part")
        part.write_text(str(count))
        part.replace(path)  # a reader never sees a half-written count
        return result

    return counted
