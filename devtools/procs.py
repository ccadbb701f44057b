"""Real server and worker processes for the integration tests and the service benchmark, with
logs kept for failures."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools.poll import poll_until

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BNLAB = str(Path(PYTHON).with_name("bnlab"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The test process's environment minus any BNLAB_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNLAB_")}
    env.update(PYTHONUNBUFFERED="1", MPLCONFIGDIR=overrides.pop("MPLCONFIGDIR", "/tmp/bnlab-mpl"))
    env.update(overrides)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class Procs:
    """Processes started by one fixture; `stop_all` always runs in its teardown."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(list(argv), env=env, cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 15.0) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
            # and whatever it forked into its group (prefork pool children)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)

    def dump_logs(self) -> str:
        return "\n".join(f"----- {p.name} (rc={p.popen.poll()}) -----\n{p.log_tail()}"
                         for p in self.procs)


# Hang guards only: how long a wait may see nothing happen (process start-up on a loaded
# 2-core machine imports torch in several processes at once). No test passes or fails by
# being faster than these.
HANG_S = 180.0


@dataclass
class Hold:
    """The worker's test seam (worker.hold) from the test's side: a worker started with
    `env()` holds every job it trains right after that job's epoch `epoch` is stored, until
    `release(job_id)`. A test acts on a job that is certainly still running that way instead
    of racing a job it hopes is long enough. Jobs a test does not want held: release them
    up front (a job released before it gets there never waits)."""

    folder: Path
    epoch: int

    def env(self) -> dict[str, str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return {"BNLAB_TEST_HOLD_EPOCH": str(self.epoch), "BNLAB_TEST_HOLD_DIR": str(self.folder)}

    def is_held(self, job_id: str) -> bool:
        return (self.folder / f"{job_id}@{self.epoch}.held").exists()

    def wait_held(self, job_id: str, *, logs: Callable[[], str] = str,
                  timeout: float = HANG_S) -> None:
        """Until the job's training holds after epoch `epoch` (fails only on a hang)."""
        poll_until(lambda: self.is_held(job_id), bool,
                   what=f"hold of job {job_id} at epoch {self.epoch}", timeout=timeout,
                   describe=lambda _: f"not held\n{logs()}")

    def release(self, job_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{job_id}@{self.epoch}.go").touch()

    def sweeps(self, pid: int) -> int:
        """Reaper sweeps done so far by the worker process `pid` (started with `env()`)."""
        path = self.folder / f"sweeps-{pid}"
        return int(path.read_text()) if path.exists() else 0

    def wait_sweeps(self, pid: int, more: int, *, logs: Callable[[], str] = str,
                    timeout: float = HANG_S) -> None:
        """Until worker `pid`'s reaper has swept `more` times again: whatever it would do to a
        job, it has had the chance."""
        before = self.sweeps(pid)
        poll_until(lambda: self.sweeps(pid), lambda now: now >= before + more,
                   what=f"{more} more reaper sweeps of worker {pid}", timeout=timeout,
                   describe=lambda now: f"{before} -> {now}\n{logs()}")


def wait_ready(base_url: str, procs: Procs, *, timeout: float = HANG_S) -> None:
    """Poll /readyz until 200; fail early if a process died."""

    def readyz() -> tuple[bool, str]:
        for p in procs.procs:
            if p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode}\n"
                                     f"{procs.dump_logs()}")
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=2)
        except httpx.HTTPError as exc:
            return False, repr(exc)
        return r.status_code == 200, r.text

    poll_until(readyz, lambda answer: answer[0], what=f"ready {base_url}", timeout=timeout,
               interval=0.3, describe=lambda answer: f"{answer[1]}\n{procs.dump_logs()}")


def wait_for_log(proc: Proc, needle: str, *, timeout: float = HANG_S) -> None:
    tail = poll_until(lambda: proc.log_tail(200_000),
                      lambda tail: needle in tail or proc.popen.poll() is not None,
                      what=f"{needle!r} in {proc.name}'s log", timeout=timeout, interval=0.3,
                      describe=lambda _: f"\n{proc.log_tail()}")
    if needle not in tail:
        raise AssertionError(f"{proc.name} exited with no {needle!r}\n{proc.log_tail()}")


def celery_worker_argv(name: str, queues: str = "cpu", pool: str = "solo") -> list[str]:
    return [PYTHON, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", pool, "-c", "1",
            "-Q", queues, "-n", name, "--loglevel", "INFO", "--without-gossip",
            "--without-mingle"]


@contextlib.contextmanager
def embedded_serve(root: Path, *, show_logs: bool = True, **env: str
                   ) -> Iterator[tuple[str, Procs]]:
    """`bnlab serve` with no database or broker configured (SQLite + filesystem broker under
    root/"home", and its own worker); `env` adds settings. Yields (base URL, processes).
    `show_logs`: print the processes' logs at the end (a failing test shows them)."""
    port = free_port()
    procs = Procs(root)
    try:
        procs.start("serve", [BNLAB, "serve", "--port", str(port)],
                    clean_env(BNLAB_HOME=str(root / "home"), **env))
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, procs)
        yield base_url, procs
    finally:
        procs.stop_all()
        # `bnlab serve` starts its worker in a session of its own: never leave one behind
        serve_log = procs.procs[0].log_tail(10**8) if procs.procs else ""
        for pid in re.findall(r"embedded worker started \(pid (\d+)\)", serve_log):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
        if show_logs:
            sys.stderr.write(procs.dump_logs() + "\n")
