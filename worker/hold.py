"""Test seam, off by default: hold every job after one epoch is stored until a file says go.

With BNLAB_TEST_HOLD_EPOCH=N and BNLAB_TEST_HOLD_DIR=<dir> set, a worker's training, right
after job J's epoch N row is committed, creates <dir>/<J>@<N>.held and waits until
<dir>/<J>@<N>.go exists. The integration tests use it to act on a job that is certainly still
running (kill or stop its worker, cancel it, flush the broker) however fast or slow the
machine is, instead of racing a short job. Its lease keeps being renewed meanwhile, and a
signal still reaches the worker. Never set in production: nothing reads these files otherwise.

N=0 holds before the claim instead: the worker has taken the job's message from the broker
(unacknowledged) and not yet claimed the job, the moment a SIGKILL leaves a message stranded.
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


def _wait_for_go(folder: Path, job_id: str, epoch: int, poll_s: float) -> None:
    go = go_file(folder, job_id, epoch)
    held_file(folder, job_id, epoch).touch()
    if go.exists():
        return
    log.warning("test seam: job %s held at epoch %d until %s exists", job_id, epoch, go)
    while not go.exists():
        time.sleep(poll_s)
    log.warning("test seam: job %s goes on at epoch %d", job_id, epoch)


def epoch_hold(folder: Path | None, epoch: int | None, *, poll_s: float = 0.02
               ) -> EpochWritten | None:
    """The RunContext.on_epoch_written hook that holds after `epoch` (>= 1) is stored; None
    unless both are set."""
    if folder is None or not epoch:
        return None

    def hold(job_id: str, written: int) -> None:
        if written == epoch:
            _wait_for_go(folder, job_id, epoch, poll_s)

    return hold


def claim_hold(folder: Path | None, epoch: int | None, *, poll_s: float = 0.02
               ) -> Callable[[str], None] | None:
    """The RunContext.before_claim hook: with epoch 0, every job waits after its message is
    taken and before it is claimed; None otherwise."""
    if folder is None or epoch != 0:
        return None
    return lambda job_id: _wait_for_go(folder, job_id, 0, poll_s)


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
