"""End to end: real uvicorn, real Celery workers, Redis + PostgreSQL or the embedded default."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.poll import poll_until
from devtools.procs import (
    HANG_S,
    PYTHON,
    Proc,
    Procs,
    celery_worker_argv,
    clean_env,
    embedded_serve,
    free_port,
    wait_for_log,
    wait_ready,
)
from tests.integration.flow import (
    check_history,
    experiment_flow,
    notebook_flow,
    submit,
    wait_done,
)

pytestmark = pytest.mark.integration

# Epochs of a job that runs until cancelled: at a millisecond or more an epoch, longer than
# any test's timeout on any machine.
ENDLESS = 10_000_000


@dataclass
class Stack:
    base_url: str
    procs: Procs
    workers: list[Proc]


@pytest.fixture(scope="module")
def service_db_url(new_postgres_database: Callable[[], str]) -> str:
    """The stack's own database: other suites' rows never show up in its listings."""
    return new_postgres_database()


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory, service_db_url: str,
                redis_url: str) -> Iterator[Stack]:
    """uvicorn + two Celery workers (nodes a@ prefork, b@ solo) on Redis and PostgreSQL."""
    from models.db.migrate import upgrade

    upgrade(service_db_url)  # what `bnlab migrate` / compose's migrate service does
    home = tmp_path_factory.mktemp("stack")
    # BNLAB_MAX_EPOCHS: room for a job that cannot end before a test cancels it
    env = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=service_db_url,
                    BNLAB_HOME=str(home), BNLAB_HEARTBEAT_INTERVAL="1",
                    BNLAB_MAX_EPOCHS=str(ENDLESS))
    procs = Procs(home)
    port = free_port()
    try:
        procs.start("api", [PYTHON, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                            "--port", str(port)], env)
        # one of each pool: prefork (the GPU default: task in a forked child) and solo
        workers = [procs.start(f"worker-{n}", celery_worker_argv(f"{n}@%h", pool=pool), env)
                   for n, pool in (("a", "prefork"), ("b", "solo"))]
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, procs)
        for w in workers:
            wait_for_log(w, " ready.")
        yield Stack(base_url, procs, workers)
    finally:
        procs.stop_all()
        print(procs.dump_logs())


def test_notebook_on_redis_and_postgres(redis_stack: Stack, notebook_csv: bytes) -> None:
    with httpx.Client(base_url=redis_stack.base_url, timeout=30) as client:
        jobs = notebook_flow(client, notebook_csv, epochs=5, logs=redis_stack.procs.dump_logs)
    assert all(job["worker"].split("@")[0] in ("a", "b") for job in jobs.values()), jobs


def test_notebook_experiment_trains_stacked_on_redis_and_postgres(
        redis_stack: Stack, notebook_csv: bytes) -> None:
    with httpx.Client(base_url=redis_stack.base_url, timeout=30) as client:
        exp = experiment_flow(client, notebook_csv, seeds=4, epochs=3,
                              logs=redis_stack.procs.dump_logs)
    assert {c["variant"] for c in exp["children"]} == {"plain", "bn"}
    # Each variant's seeds differ only by seed: a worker claimed siblings and trained them as
    # one stacked model (the log line of the claim says how many).
    logs = "".join(w.log_tail(10**8) for w in redis_stack.workers)
    stacked = [int(n) for n in re.findall(r"with (\d+) stacked siblings", logs)]
    assert stacked, logs[-3000:]
    assert max(stacked) >= 1, logs[-3000:]


@pytest.mark.usefixtures("redis_stack")
def test_workers_beat_into_the_database(service_db_url: str) -> None:
    from models.db import make_engine, session_factory
    from models.db import repository as repo

    engine = make_engine(service_db_url)
    try:
        with session_factory(engine)() as session:
            alive = repo.live_workers(session, queue="cpu", within_s=30)
    finally:
        engine.dispose()
    names = {w.name.split("@")[0]: w for w in alive}
    assert {"a", "b"} <= set(names), [w.name for w in alive]
    assert names["a"].device == "cpu"
    assert names["a"].queues == ["cpu"]


def test_two_concurrent_jobs_on_two_workers(redis_stack: Stack) -> None:
    epochs = 60
    training: dict[str, Any] = {"epochs": epochs, "batch_size": 32, "seed": 1}
    body = {"dataset": {"name": "concentric_circles", "n_samples": 1000, "seed": 3},
            "network": {"hidden": [8, 8], "batchnorm": "after_activation"},
            "training": training}
    logs = redis_stack.procs.dump_logs
    with httpx.Client(base_url=redis_stack.base_url, timeout=30) as client:
        # The first job runs until cancelled: the second certainly starts and ends while it
        # runs, on the other worker (one runs one task at a time: prefetch 1, acks late).
        first = submit(client, {**body, "name": "first",
                                "training": {**training, "epochs": ENDLESS}})
        poll_until(lambda: client.get(f"/v1/jobs/{first}").json()["epoch"],
                   lambda epoch: epoch >= 1, what="first epoch of the first job",
                   timeout=HANG_S, describe=lambda epoch: f"{epoch}\n{logs()}")
        second = submit(client, {**body, "name": "second"})
        b = wait_done(client, [second], logs=logs)[second]
        assert b["status"] == "succeeded", b
        assert b["epoch"] == epochs, b
        check_history(client, second, epochs)
        assert client.get(f"/v1/jobs/{first}").json()["status"] == "running"
        r = client.post(f"/v1/jobs/{first}/cancel")
        assert r.status_code == 200, r.text
        a = wait_done(client, [first], logs=logs)[first]
        assert a["status"] == "cancelled", (a, logs())
        check_history(client, first, a["epoch"])  # what it trained is kept, without holes
    assert a["worker"] != b["worker"], (a, b)
    assert datetime.fromisoformat(a["started_at"]) < datetime.fromisoformat(b["started_at"])
    assert datetime.fromisoformat(b["finished_at"]) < datetime.fromisoformat(a["finished_at"])


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, Procs]]:
    """`bnlab serve` with no database or broker configured: SQLite + filesystem broker."""
    with embedded_serve(tmp_path) as server:
        yield server


def test_notebook_on_embedded_default(embedded_server: tuple[str, Procs],
                                      notebook_csv: bytes, tmp_path: Path) -> None:
    base_url, procs = embedded_server
    with httpx.Client(base_url=base_url, timeout=30) as client:
        notebook_flow(client, notebook_csv, epochs=5, logs=procs.dump_logs)
        experiment_flow(client, notebook_csv, seeds=3, epochs=3, logs=procs.dump_logs)
    home = tmp_path / "home"
    assert (home / "bnlab.sqlite3").exists()
    assert list((home / "broker" / "processed").glob("*.msg")), "messages went elsewhere"

    # The server stops its worker with itself.
    serve = procs.procs[0]
    match = re.search(r"embedded worker started \(pid (\d+)\)", serve.log_tail(10**8))
    assert match, serve.log_tail()
    worker_pid = int(match.group(1))
    serve.popen.send_signal(signal.SIGTERM)
    serve.popen.wait(30)
    try:
        os.kill(worker_pid, 0)
    except ProcessLookupError:
        return
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail(f"embedded worker {worker_pid} outlived bnlab serve\n{procs.dump_logs()}")
