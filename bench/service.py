"""End-to-end service overhead: the notebook's BN job over HTTP vs the bare trainer.

    .venv/bin/python -m bench.service [--quick] [--only embedded,redis]

The job (dense3 relu, BN, dense2 relu, BN, dense1 sigmoid on the notebook CSV, 200 epochs, tail
split 0.2, batch 32, Adam 1e-3) is submitted to a real running service:

- embedded: `bnlab serve` (SQLite, filesystem broker, its own Celery worker);
- redis+postgres: uvicorn + a `bnlab worker` (prefork, concurrency 1, as compose runs it) on
  Redis and a PostgreSQL database created for the run and dropped after it.

Each service first runs a short warm-up job (the worker has imported torch and trained once:
a warm worker). Then per repetition: the bare trainer (`train_job` in this process, one torch
thread as the worker uses) and the same job submitted over HTTP.

- POST->succeeded: from just before the POST to the job's `finished_at` (the server's clock,
  the same machine's), so the client's polling interval adds nothing; divided by the bare
  trainer's time (target <= 1.15x).
- submit->first epoch: from just before the POST until `GET /v1/jobs/{id}` shows epoch >= 1,
  polled every 10 ms for that first second (target < 1 s). After it, the client polls every
  0.25 s with If-None-Match, as a light client would.

The median over the repetitions is reported (quick: one repetition).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.report import Row, print_table

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("BNLAB_BENCH_PG_ADMIN",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("BNLAB_BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BNLAB_BENCH_REDIS_PORT", "6379"))
TERMINAL = {"succeeded", "failed", "cancelled"}
OVERHEAD_TARGET = 1.15
FIRST_EPOCH_TARGET_S = 1.0
GROUP = "service"


def job_body(dataset_id: str, *, epochs: int, seed: int = 1, name: str = "bench") -> dict[str, Any]:
    """The notebook's BN job as the API takes it."""
    from models.spec import NOTEBOOK_BN_LAYERS

    return {"name": name, "dataset": {"id": dataset_id}, "network": {"layers": NOTEBOOK_BN_LAYERS},
            "training": {"epochs": epochs, "batch_size": 32, "validation_split": 0.2,
                         "split": "tail", "optimizer": {"name": "adam", "lr": 1e-3},
                         "seed": seed},
            "device": "cpu"}


# ---------------------------------------------------------------------------------------------
# Services: each context manager yields a base URL and stops everything it started.


@dataclass
class Service:
    name: str
    base_url: str
    logs: Callable[[], str]
    api_pid: int | None = None  # the process serving HTTP, for CPU accounting


@contextlib.contextmanager
def embedded_service(**env: str) -> Iterator[Service]:
    """`bnlab serve` with nothing configured: SQLite + filesystem broker + its own worker."""
    from devtools.procs import embedded_serve

    with tempfile.TemporaryDirectory(prefix="bnlab-bench-") as tmp, \
            embedded_serve(Path(tmp), show_logs=False, **env) as (url, procs):
        yield Service("embedded", url, procs.dump_logs)


def _pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh database (plain URL) and its dropper; raises if PostgreSQL is unreachable."""
    import psycopg

    name = f"bnlab_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop


def _redis_db() -> tuple[str, Callable[[], None]]:
    """A Redis database index that holds no keys (nobody else uses it now) and its cleaner."""
    import redis

    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=3)
        if client.dbsize() == 0:
            return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}", lambda c=client: c.flushdb()
    raise RuntimeError(f"no empty Redis database on {REDIS_HOST}:{REDIS_PORT}")


@contextlib.contextmanager
def redis_postgres_service(workers: int = 1, **env: str) -> Iterator[Service]:
    """uvicorn + `workers` Celery workers (prefork, concurrency 1, as compose runs them) on
    Redis and a PostgreSQL database of their own."""
    from devtools.procs import (
        PYTHON,
        Procs,
        celery_worker_argv,
        clean_env,
        free_port,
        wait_for_log,
        wait_ready,
    )
    from models.db.migrate import upgrade

    db_url, drop_db = _pg_database()
    try:
        redis_url, flush_redis = _redis_db()
        try:
            upgrade(db_url)
            with tempfile.TemporaryDirectory(prefix="bnlab-bench-") as tmp:
                envs = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=db_url,
                                 BNLAB_HOME=tmp, **env)
                procs = Procs(Path(tmp))
                port = free_port()
                try:
                    procs.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host",
                                        "127.0.0.1", "--port", str(port)], envs)
                    started = [procs.start(f"worker-{i}", celery_worker_argv(
                        f"w{i}@%h", pool="prefork"), envs) for i in range(workers)]
                    url = f"http://127.0.0.1:{port}"
                    wait_ready(url, procs)
                    for w in started:
                        wait_for_log(w, " ready.")
                    yield Service("redis+postgres", url, procs.dump_logs,
                                  procs.procs[0].popen.pid)
                finally:
                    procs.stop_all()
        finally:
            flush_redis()
    finally:
        drop_db()


# ---------------------------------------------------------------------------------------------
# Measuring one job


def upload_notebook_csv(client: httpx.Client) -> str:
    from models.datasets import notebook_csv

    r = client.post("/v1/datasets", files={"file": ("concertriccir2.csv", notebook_csv(),
                                                    "text/csv")})
    r.raise_for_status()
    return str(r.json()["id"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


@dataclass
class Timing:
    job_id: str
    first_epoch_s: float  # POST -> epoch >= 1 seen by the client
    total_s: float  # POST -> finished_at (server clock)
    queued_s: float  # created_at -> started_at (broker + claim)
    running_s: float  # started_at -> finished_at
    job: dict[str, Any]


def wait_job(client: httpx.Client, job_id: str, *, timeout: float = 300.0,
             interval: float = 0.25, logs: Callable[[], str] = str) -> dict[str, Any]:
    """Poll with If-None-Match until the job ends; its last JSON."""
    deadline = time.monotonic() + timeout
    etag: str | None = None
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag} if etag else {})
        if r.status_code == 200:
            job, etag = r.json(), r.headers.get("etag")
            if job["status"] in TERMINAL:
                return job
        elif r.status_code != 304:
            r.raise_for_status()
        time.sleep(interval)
    raise TimeoutError(f"job {job_id} not done after {timeout}s: {job.get('status')}\n{logs()}")


def timed_job(client: httpx.Client, body: dict[str, Any], logs: Callable[[], str] = str
              ) -> Timing:
    t0 = time.time()
    r = client.post("/v1/jobs", json=body)
    r.raise_for_status()
    job_id = r.json()["id"]
    first = None
    deadline = time.monotonic() + 60
    while first is None and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["epoch"] >= 1 or job["status"] in TERMINAL:
            first = time.time() - t0
            break
        time.sleep(0.01)
    job = wait_job(client, job_id, logs=logs)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}\n{logs()}")
    return Timing(job_id, first if first is not None else float("nan"),
                  _ts(job["finished_at"]) - t0,
                  _ts(job["started_at"]) - _ts(job["created_at"]),
                  _ts(job["finished_at"]) - _ts(job["started_at"]), job)


class BareTrainer:
    """The same job through `train_job` in this process, one torch thread like the worker."""

    def __init__(self, epochs: int, seed: int = 1) -> None:
        import torch

        from models.datasets import notebook_csv, parse_csv
        from models.resolution import resolve_job
        from models.spec import JobSpec

        self.torch = torch
        self.table = parse_csv(notebook_csv())
        body = job_body("notebook", epochs=epochs, seed=seed)
        spec = JobSpec.model_validate(body)
        self.job = resolve_job(spec, n_features=self.table.n_features,
                               n_classes=self.table.n_classes, n_rows=self.table.n_rows)
        self.device = torch.device("cpu")
        self.time()  # warm-up: allocator, kernels, first-call paths

    def time(self) -> float:
        from models.trainer import train_job

        threads = self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            train_job(self.job, self.table, device=self.device)
            return time.perf_counter() - start
        finally:
            self.torch.set_num_threads(threads)


def measure(service: Service, bare: BareTrainer, *, epochs: int, reps: int) -> list[Row]:
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        dataset_id = upload_notebook_csv(client)
        warm = client.post("/v1/jobs", json=job_body(dataset_id, epochs=3, name="warm-up"))
        warm.raise_for_status()
        wait_job(client, warm.json()["id"], interval=0.05, logs=service.logs)
        bare_s, timings = [], []
        for _ in range(reps):
            bare_s.append(bare.time())
            timings.append(timed_job(client, job_body(dataset_id, epochs=epochs),
                                     service.logs))
    # Each job against the bare run just before it: a neighbour's burst of CPU on a shared
    # machine then skews one pair, not the comparison.
    ratio = statistics.median(t.total_s / b for t, b in zip(timings, bare_s, strict=True))
    total = statistics.median(t.total_s for t in timings)
    first = statistics.median(t.first_epoch_s for t in timings)
    queued = statistics.median(t.queued_s for t in timings)
    running = statistics.median(t.running_s for t in timings)
    n = f"median of {reps}" if reps > 1 else "1 run"
    return [
        Row(GROUP, f"{service.name}: POST->succeeded", total, "s", ratio, "vs bare trainer",
            f"<= {OVERHEAD_TARGET}x", ratio <= OVERHEAD_TARGET,
            f"{epochs} epochs, {n}; bare {statistics.median(bare_s):.2f} s; queued "
            f"{queued * 1000:.0f} ms, running {running:.2f} s"),
        Row(GROUP, f"{service.name}: submit->first epoch", first * 1000, "ms",
            target=f"< {FIRST_EPOCH_TARGET_S * 1000:.0f} ms", ok=first < FIRST_EPOCH_TARGET_S,
            note=f"warm worker, {n}"),
    ]


BACKENDS: dict[str, Callable[[], contextlib.AbstractContextManager[Service]]] = {
    "embedded": embedded_service,
    "redis": redis_postgres_service,
}


def run(quick: bool, only: list[str] | None = None) -> list[Row]:
    epochs, reps = 200, (2 if quick else 5)
    bare = BareTrainer(epochs)
    rows: list[Row] = []
    for name, start in BACKENDS.items():
        if only and name not in only:
            continue
        try:
            with start() as service:
                rows += measure(service, bare, epochs=epochs, reps=reps)
        except Exception as exc:  # a backend that cannot run is a row, not a crash
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            rows.append(Row(GROUP, f"{name}: not measured", float("nan"), "", ok=False,
                            note=f"{type(exc).__name__}: {first_line[:200]}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repetition per backend")
    parser.add_argument("--only", default="", help="comma-separated: embedded, redis")
    args = parser.parse_args()
    only = [o.strip() for o in args.only.split(",") if o.strip()] or None
    print_table(run(args.quick, only))


if __name__ == "__main__":
    main()
