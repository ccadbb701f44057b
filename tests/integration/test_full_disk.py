"""The embedded default when its disk fills up while a job trains (issue 18).

`bnlab serve` gets a BNLAB_HOME on a 64 MiB tmpfs the test mounts; a job is held after an
epoch, the test fills the filesystem to the last byte, and lets the job go on. Its writes
(SQLite: epoch rows, checkpoints, leases) fail with "database or disk is full" and are retried:
the job pauses with the worker saying the disk is full, the API keeps answering reads, says
so at /readyz and refuses new work with 507. Once space is freed the job goes on from where it
paused and new jobs run; the SQLite file passes its integrity check throughout.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.procs import (
    HANG_S,
    Hold,
    Procs,
    clean_env,
    wait_for_log,
)
from tests.support.fault_stack import embedded_on, job_body
from tests.support.services import unavailable

pytestmark = pytest.mark.integration

DISK_MB = 64


@contextlib.contextmanager
def small_disk() -> Iterator[Path]:
    """A tmpfs of DISK_MB MiB, unmounted and removed afterwards."""
    if os.geteuid() != 0:
        unavailable("the full-disk test needs root (to mount a small tmpfs)")
    folder = Path(tempfile.mkdtemp(prefix="bnlab-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs",
                           str(folder)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        folder.rmdir()
        unavailable(f"no tmpfs could be mounted ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def fill(folder: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 512, 1):  # big pieces, then the last few bytes
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_full_disk_pauses_the_job_reads_go_on_and_it_resumes(tmp_path: Path) -> None:
    epochs = 40
    with small_disk() as home:
        hold = Hold(tmp_path / "hold", 3)
        env = clean_env(BNLAB_HOME=str(home), BNLAB_TORCH_THREADS="1",
                        BNLAB_CHECKPOINT_EVERY="1", BNLAB_EPOCH_WRITE_INTERVAL="0",
                        BNLAB_SMALL_CHECKPOINT_INTERVAL="0", **hold.env())
        procs = Procs(tmp_path)
        try:
            with embedded_on(procs, env) as (serve, stack):
                client = stack.client
                job_id = stack.submit(job_body("full-disk", epochs))
                stack.wait_held(hold, job_id)
                filler = fill(home)
                hold.release(job_id)  # its next writes meet the full disk
                wait_for_log(serve, ": the disk is full (")

                # Paused where its writes stopped fitting (SQLite may still have had room for
                # a few in its WAL); reads answer; the probe and submissions say why.
                paused = stack.job(job_id)
                assert paused["status"] == "running", paused
                assert 3 <= paused["epoch"] < epochs, paused
                assert stack.history(job_id)["epoch"] == list(range(1, paused["epoch"] + 1))
                ready = client.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["checks"]["disk"].startswith("OSError: the disk is full"), \
                    ready.text
                refused = client.post("/v1/jobs", json=job_body("refused", 5))
                assert refused.status_code == 507, refused.text
                assert refused.json()["error"] == "InsufficientStorage", refused.text
                assert "disk is full" in refused.json()["detail"], refused.text
                assert integrity(home / "bnlab.sqlite3") == "ok"

                filler.unlink()
                job = stack.wait_done(job_id, timeout=HANG_S)
                assert job["status"] == "succeeded", (job, procs.dump_logs())
                assert job["attempts"] == 1, job  # paused, never lost
                h = stack.history(job_id)
                assert h["epoch"] == list(range(1, epochs + 1)), h["epoch"]
                assert client.get("/readyz").status_code == 200
                after_id = stack.submit(job_body("after", 5))
                hold.release(after_id)  # not held: it only shows that new work runs
                after = stack.wait_done(after_id)
                assert after["status"] == "succeeded", (after, procs.dump_logs())
                assert integrity(home / "bnlab.sqlite3") == "ok"
        finally:
            procs.stop_all()
            print(procs.dump_logs())
