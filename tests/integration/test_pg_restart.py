"""PostgreSQL restarts under a running service (issue 18): nothing is lost, nothing is doubled.

uvicorn and two real `celery worker`s on Redis and a private PostgreSQL cluster this test
starts on a free port (never the machine's shared server, which it stops and starts again).
Two jobs are held running at an epoch (the worker's `Hold` seam) and one waits in the queue
when the server stops; the held ones are let go at once, so their epoch writes meet the outage
and retry. Meanwhile the API answers 503, never a 500. After the restart every job ends
succeeded with each epoch exactly once and checkpoints that verify.

The lease timeout is longer than the outage, as in production (60 s against a restart of
seconds): no job's lease lapses, so none is taken over and each runs in one attempt.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from bnlab import Client
from devtools.poll import poll_until
from devtools.procs import (
    HANG_S,
    PYTHON,
    Hold,
    Proc,
    Procs,
    celery_worker_argv,
    clean_env,
    free_port,
    wait_for_log,
    wait_ready,
)
from models.checkpoint import decode
from tests.integration.flow import TERMINAL
from tests.support.fault_stack import job_body
from tests.support.pg_cluster import Cluster, private_cluster

pytestmark = pytest.mark.integration

OUTAGE_S = 10.0  # how long the server stays down: the fault, not a wait for anything
HOLD_EPOCH = 2
EPOCHS = {"first": 12, "second": 12, "queued": 8}
LEASE_TIMEOUT = 30.0  # > the outage (and the retries' backoff after it)
DB_RETRY = 90.0  # how long a worker retries a write: far past the outage
ENV = {"BNLAB_HEARTBEAT_INTERVAL": "0.5", "BNLAB_LEASE_TIMEOUT": str(LEASE_TIMEOUT),
       "BNLAB_REAPER_INTERVAL": "1", "BNLAB_REQUEUE_GRACE": "2",
       "BNLAB_DB_RETRY": str(DB_RETRY), "BNLAB_TORCH_THREADS": "1",
       "BNLAB_CHECKPOINT_EVERY": "1",
       # Every epoch written on its own, so the epoch after the hold certainly meets the outage.
       "BNLAB_EPOCH_WRITE_INTERVAL": "0", "BNLAB_SMALL_CHECKPOINT_INTERVAL": "0"}
RETRIED_WRITE = re.compile(r"job\(s\) epoch \d+: database unavailable \(.+\); retrying in")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A private cluster (tests/support/pg_cluster.py) with a migrated database "bnlab"."""
    with private_cluster() as pg:
        yield pg


# ----------------------------------------------------------------------------- the stack


@dataclass
class Service:
    client: httpx.Client
    api: Procs
    workers: Procs
    pg: Cluster
    env: dict[str, str]

    def logs(self) -> str:
        return (f"{self.api.dump_logs()}\n{self.workers.dump_logs()}\n"
                f"----- postgres -----\n{self.pg.log()}")

    def poll(self, what: str, fn: Callable[[], Any], *, timeout: float = HANG_S) -> Any:
        """fn() until it is truthy, or fail with every process's log."""
        return poll_until(fn, bool, what=what, timeout=timeout, interval=0.2,
                          describe=lambda last: f"{last!r}\n{self.logs()}")

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def finished(self, job_id: str) -> dict[str, Any] | None:
        job = self.job(job_id)
        return job if job["status"] in TERMINAL else None

    def submit(self, body: dict[str, Any]) -> str:
        r = self.client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def epoch_rows(self, job_id: str) -> list[int]:
        with psycopg.connect(self.pg.url()) as conn:
            rows = conn.execute("SELECT epoch FROM epoch_metric WHERE job_id = %s ORDER BY "
                                "epoch", (job_id,)).fetchall()
        return [int(r[0]) for r in rows]


@pytest.fixture
def service(cluster: Cluster, redis_url: str, tmp_path: Path) -> Iterator[Service]:
    """uvicorn on the private cluster and this session's Redis db; workers start in the test."""
    redis.Redis.from_url(redis_url).flushdb()
    env = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=cluster.url(),
                    BNLAB_HOME=str(tmp_path / "home"), **ENV)
    api, workers = Procs(tmp_path), Procs(tmp_path)
    port = free_port()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    service = Service(client, api, workers, cluster, env)
    try:
        api.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                          "--port", str(port)], env)
        yield service
    finally:
        client.close()
        workers.stop_all(grace=10)
        api.stop_all()
        print(service.logs())
        redis.Redis.from_url(redis_url).flushdb()


def start_workers(service: Service, hold: Hold) -> list[Proc]:
    env = {**service.env, **hold.env()}
    procs = [service.workers.start(name, celery_worker_argv(f"{name}@%h"), env)
             for name in ("pg-a", "pg-b")]
    for proc in procs:  # both consume before any job is sent: one running job each
        wait_for_log(proc, " ready.")
    return procs


# ------------------------------------------------------------------------------- checks


def retried_a_write(proc: Proc) -> bool:
    """The worker logged an epoch write that met the outage and is being retried."""
    return RETRIED_WRITE.search(proc.log_tail(10**6)) is not None


def assert_outage_answer(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "DatabaseUnavailable", body
    assert body["detail"].startswith("the database is unreachable ("), body
    assert body["detail"].endswith("); retry shortly"), body
    assert "Traceback" not in r.text, r.text
    assert r.headers["Retry-After"].isdigit(), r.headers


def assert_exact_history(service: Service, job_id: str, epochs: int) -> None:
    """Epochs exactly 1..N in the API and in the table: no gap, no duplicate."""
    r = service.client.get(f"/v1/jobs/{job_id}/history")
    assert r.status_code == 200, r.text
    history = r.json()
    assert history["epoch"] == list(range(1, epochs + 1)), (history["epoch"], service.logs())
    assert len(history["loss"]) == epochs
    assert service.epoch_rows(job_id) == list(range(1, epochs + 1))


def assert_checkpoints_verify(service: Service, job_id: str, epochs: int) -> None:
    """Every stored checkpoint downloads with the sha256 it is listed under and decodes as a
    bnlab checkpoint of the epoch it claims; "last" is the final epoch's."""
    r = service.client.get(f"/v1/jobs/{job_id}/checkpoints")
    assert r.status_code == 200, r.text
    listed = {c["kind"]: c for c in r.json()}
    assert "last" in listed, listed
    for kind, entry in listed.items():
        blob = service.client.get(f"/v1/jobs/{job_id}/checkpoints/{kind}")
        assert blob.status_code == 200, blob.text
        digest = hashlib.sha256(blob.content).hexdigest()
        assert digest == entry["sha256"], (kind, entry)
        assert blob.headers["ETag"] == f'"{digest}"'
        meta = decode(blob.content).meta
        assert meta["kind"] == kind, meta
        assert int(meta["epoch"]) == entry["epoch"] == int(blob.headers["X-Checkpoint-Epoch"])
    assert listed["last"]["epoch"] == epochs, listed


# --------------------------------------------------------------------------------- test


def test_postgres_restart_loses_and_doubles_nothing(service: Service, tmp_path: Path) -> None:
    wait_ready(str(service.client.base_url), service.api)
    hold = Hold(tmp_path / "hold", HOLD_EPOCH)
    workers = start_workers(service, hold)
    ids = {name: service.submit(job_body(name, epochs)) for name, epochs in EPOCHS.items()}

    # Two jobs run, each held by its worker after epoch 2; the third waits in the queue.
    held = service.poll("two jobs held", lambda: (
        found if len(found := [j for j in ids.values() if hold.is_held(j)]) == 2 else None))
    (waiting,) = set(ids.values()) - set(held)
    hold.release(waiting)  # it never waits when its turn comes
    assert service.job(waiting)["status"] == "queued"
    for job_id in held:
        assert service.job(job_id)["status"] == "running"

    # A user's `job.wait()` across the outage: it must poll through the 503s, not raise.
    waited: dict[str, Any] = {}

    def wait_as_a_user() -> None:
        with Client(str(service.client.base_url)) as bn:
            try:
                waited["job"] = bn.jobs.wait(held[0], timeout=HANG_S, poll_interval=0.5)
            except Exception as exc:  # any failure: reported by the asserts below
                waited["error"] = exc

    waiter = threading.Thread(target=wait_as_a_user, daemon=True)
    waiter.start()
    service.pg.stop()
    stopped = time.monotonic()
    for job_id in held:  # they train on: their next epoch's write meets the outage
        hold.release(job_id)
    service.poll("/readyz 503", lambda: service.client.get("/readyz").status_code == 503)
    for job_id in ids.values():
        assert_outage_answer(service.client.get(f"/v1/jobs/{job_id}"))
    for proc in workers:
        service.poll(f"{proc.name} retrying its epoch write", partial(retried_a_write, proc))
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    assert_outage_answer(service.client.get(f"/v1/jobs/{held[0]}"))
    service.pg.start()

    # The API's pool recovers by itself; the workers' writes go through on their next retry.
    service.poll("/readyz 200 again", lambda: service.client.get("/readyz").status_code == 200)
    for name, job_id in ids.items():
        job = service.poll(f"job {name} finished", partial(service.finished, job_id))
        assert job["status"] == "succeeded", (job, service.logs())
        assert job["attempts"] == 1, job  # no lease lapsed: nobody took it over
        assert job["error"] is None, job
        assert job["epoch"] == EPOCHS[name], job
        assert_exact_history(service, job_id, EPOCHS[name])
        assert_checkpoints_verify(service, job_id, EPOCHS[name])
    waiter.join(HANG_S)
    assert "error" not in waited, waited
    assert "job" in waited, "job.wait() did not return"
    assert waited["job"].status == "succeeded", waited
    # Every worker lived through it; the API said 503 with one line each, never a traceback.
    for proc in workers:
        assert proc.popen.poll() is None, proc.log_tail()
    api_log = service.api.procs[0].log_tail(10**6)
    assert "DatabaseUnavailable on GET /v1/jobs/" in api_log, api_log
    assert "Traceback" not in api_log, api_log
