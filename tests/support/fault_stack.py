"""The fault tests' service stack: uvicorn on PostgreSQL + Redis, real celery workers started
per test, private servers, and the checks every fault test makes (nothing lost, nothing
duplicated). Shared by tests/integration's fault tests; waits poll, with hang guards only."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import redis

from devtools.poll import poll_until
from devtools.procs import (
    BNLAB,
    HANG_S,
    PYTHON,
    Hold,
    Proc,
    Procs,
    celery_worker_argv,
    clean_env,
    free_port,
    wait_ready,
)
from tests.integration.flow import TERMINAL

T = TypeVar("T")

MAX_ATTEMPTS = 2
LEASE_TIMEOUT = 3.0
# Fast lease, reaper and requeue settings; the API reads BNLAB_MAX_ATTEMPTS at submission.
FAST_ENV = {"BNLAB_HEARTBEAT_INTERVAL": "0.5", "BNLAB_LEASE_TIMEOUT": str(LEASE_TIMEOUT),
            "BNLAB_REAPER_INTERVAL": "1", "BNLAB_REQUEUE_GRACE": "2",
            "BNLAB_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "BNLAB_TORCH_THREADS": "1",
            "BNLAB_CHECKPOINT_EVERY": "1",
            # Epoch-exact semantics (a checkpoint and a flag read every epoch), which these
            # tests pin down; the batched defaults are covered by tests/worker.
            "BNLAB_EPOCH_WRITE_INTERVAL": "0", "BNLAB_SMALL_CHECKPOINT_INTERVAL": "0"}
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
# A lost worker is noticed after the lease times out, at the next sweep of a live worker's
# reaper (which itself may need to start: torch import on a busy 2-core machine). A hang
# guard, like every timeout here.
RECOVERY_S = HANG_S
RESUMED = re.compile(r"resuming job (\S+) from epoch (\d+)")


def job_body(name: str, epochs: int, *, seed: int = 1) -> dict[str, Any]:
    """A small BatchNorm network on a generated dataset: ~10 steps an epoch, shuffled, so a
    resume must restore weights, BN buffers, optimizer and RNG state to match exactly."""
    return {"name": name,
            "dataset": {"name": "concentric_circles", "n_samples": 300, "seed": 3},
            "network": {"hidden": [8, 8], "batchnorm": "after_activation"},
            "training": {"epochs": epochs, "batch_size": 32, "seed": seed,
                         "optimizer": {"name": "adam", "lr": 0.01}}}


def poll(what: str, fn: Callable[[], T | None], *, timeout: float,
         logs: Callable[[], str], every: float = 0.2) -> T:
    """fn() until it returns something other than None/False, or fail with the logs."""
    value = poll_until(fn, lambda last: last is not None and last is not False, what=what,
                       timeout=timeout, interval=every,
                       describe=lambda last: f"{last!r}\n{logs()}")
    assert value is not None
    return value


def kill_group(proc: Proc, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, sig)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Stack:
    """uvicorn on PostgreSQL + Redis, shared by the module; workers are started per test."""

    base_url: str
    db_url: str
    redis_url: str
    env: dict[str, str]
    api: Procs
    client: httpx.Client
    workers: Procs | None = None
    _nodes: dict[str, Proc] = field(default_factory=dict)

    def hold(self, epoch: int) -> Hold:
        """A hold at `epoch` for workers started with it (this test's folder)."""
        assert self.workers is not None, "workers are started inside a test"
        return Hold(self.workers.log_dir / "hold", epoch)

    def start_worker(self, tag: str, *, pool: str = "solo", hold: Hold | None = None,
                     env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> Proc:
        """A real `celery worker` node "<tag>-<random>@host"; stopped at the test's end.
        With `hold`, every job it trains waits after that epoch until released; `env`
        overrides the stack's settings, `prefix` goes before the command (`ip netns exec`)."""
        assert self.workers is not None, "workers are started inside a test"
        node = f"{tag}-{uuid.uuid4().hex[:6]}"
        env = {**self.env, **(hold.env() if hold is not None else {}), **(env or {})}
        argv = [*prefix, *celery_worker_argv(f"{node}@%h", pool=pool)]
        proc = self.workers.start(node, argv, env)
        self._nodes[node] = proc
        return proc

    def worker_of(self, job: dict[str, Any]) -> Proc:
        node = str(job["worker"]).split("@")[0]
        assert node in self._nodes, (job, sorted(self._nodes))
        return self._nodes[node]

    def logs(self) -> str:
        return self.api.dump_logs() + "\n" + (self.workers.dump_logs() if self.workers else "")

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def submit(self, body: dict[str, Any]) -> str:
        r = self.client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def wait_job(self, job_id: str, what: str, cond: Callable[[dict[str, Any]], bool], *,
                 timeout: float = HANG_S) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if cond(job) else None
        return poll(f"job {job_id} {what}", check, timeout=timeout, logs=self.logs)

    def wait_held(self, hold: Hold, job_id: str) -> dict[str, Any]:
        """The job, held running at the hold's epoch (its worker waits for the test)."""
        hold.wait_held(job_id, logs=self.logs)
        job = self.job(job_id)
        assert job["status"] == "running", (job, self.logs())
        assert job["epoch"] == hold.epoch, (job, self.logs())
        return job

    def release_requested(self, job_id: str) -> bool:
        """Whether the job's worker asked it to stop at its epoch end (shutting down)."""
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT release_requested FROM job WHERE id = %s",
                               (job_id,)).fetchone()
        return bool(row and row[0])

    def wait_done(self, job_id: str, *, timeout: float = HANG_S) -> dict[str, Any]:
        return self.wait_job(job_id, "finished", lambda j: j["status"] in TERMINAL,
                             timeout=timeout)

    def history(self, job_id: str) -> dict[str, list[Any]]:
        r = self.client.get(f"/v1/jobs/{job_id}/history")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def epoch_written_at(self, job_id: str) -> dict[int, datetime]:
        """When each epoch row was written (the worker's clock: this machine's)."""
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("SELECT epoch, created_at FROM epoch_metric WHERE job_id = %s",
                                (job_id,)).fetchall()
        return {int(e): at for e, at in rows}

    def epoch_rows(self, job_id: str) -> list[int]:
        """The job's epoch rows straight from the database, in insertion-independent order."""
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("SELECT epoch FROM epoch_metric WHERE job_id = %s ORDER BY epoch",
                                (job_id,)).fetchall()
        return [int(r[0]) for r in rows]


def assert_exact_history(stack: Stack, job_id: str, epochs: int) -> dict[str, list[Any]]:
    """Epochs exactly 1..N in the API and in the table: no gap, no duplicate."""
    h = stack.history(job_id)
    assert h["epoch"] == list(range(1, epochs + 1)), (h["epoch"], stack.logs())
    for key in METRICS:
        assert len(h[key]) == epochs, key
    assert stack.epoch_rows(job_id) == list(range(1, epochs + 1))
    return h


def resume_epochs(proc: Proc, job_id: str) -> list[int]:
    """Epochs this worker resumed the job from, per its log."""
    return [int(e) for j, e in RESUMED.findall(proc.log_tail(10**8)) if j == job_id]


@contextlib.contextmanager
def api_on(db_url: str, redis_url: str, home: Path) -> Iterator[Stack]:
    """uvicorn on a migrated database and a Redis broker, stopped (logs printed) afterwards."""
    from models.db.migrate import upgrade

    upgrade(db_url)
    home.mkdir(parents=True, exist_ok=True)
    env = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=db_url,
                    BNLAB_HOME=str(home), **FAST_ENV)
    api = Procs(home)
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        api.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                          "--port", str(port)], env)
        wait_ready(str(client.base_url), api)
        yield Stack(str(client.base_url), db_url, redis_url, env, api, client)
    finally:
        client.close()
        api.stop_all()
        print(api.dump_logs())


@contextlib.contextmanager
def embedded_on(procs: Procs, env: dict[str, str]) -> Iterator[tuple[Proc, Stack]]:
    """`bnlab serve` (embedded SQLite and the worker it starts) with `env` on a free port, and
    a Stack on it; the caller's `procs` stops it."""
    port = free_port()
    serve = procs.start("serve", [BNLAB, "serve", "--port", str(port)], env)
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(base_url, procs)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield serve, Stack(base_url, "", "", env, procs, client)


def redis_server(procs: Procs, name: str, port: int, *, bind: Sequence[str] = ("127.0.0.1",)
                 ) -> Proc:
    """A private, empty Redis on `port` that keeps nothing on disk, once it answers."""
    # Unprotected: it listens only on `bind` (loopback, a test's private link) and holds
    # nothing but this test's messages.
    proc = procs.start(name, ["redis-server", "--port", str(port), "--bind", *bind,
                              "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                       clean_env())
    client = redis.Redis(port=port, socket_connect_timeout=1)
    poll(f"redis on port {port}", lambda: _pings(client), timeout=HANG_S, logs=procs.dump_logs)
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
