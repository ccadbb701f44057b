"""The Python client and the CLI against real processes: two uvicorn API processes and a Celery
worker on Redis + PostgreSQL (so an event stream can resume on the other API process)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bnlab import AsyncClient, Client, DoneEvent, EpochEvent, Event, StatusEvent
from devtools.procs import (
    BNLAB,
    PYTHON,
    Procs,
    celery_worker_argv,
    clean_env,
    free_port,
    wait_for_log,
    wait_ready,
)
from tests.integration.flow import notebook_job, notebook_rows

pytestmark = pytest.mark.integration

# Diverges at once (the worker tests' recipe): huge features, SGD with lr 10 and momentum.
HUGE_CSV = ("a,b,label\n" + "\n".join(f"{(i % 7 - 3) * 1e30},{(i % 5 - 2) * 1e30},{i % 2}"
                                      for i in range(64)) + "\n").encode()


@dataclass
class Stack:
    urls: list[str]  # two API processes on the same database and broker
    procs: Procs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          new_postgres_database: Callable[[], str], redis_url: str) -> Iterator[Stack]:
    from models.db.migrate import upgrade

    db_url = new_postgres_database()
    upgrade(db_url)
    home = tmp_path_factory.mktemp("client-stack")
    env = clean_env(BNLAB_BROKER_URL=redis_url, BNLAB_DATABASE_URL=db_url,
                    BNLAB_HOME=str(home), BNLAB_HEARTBEAT_INTERVAL="1")
    procs = Procs(home)
    try:
        urls = []
        for name in ("api-a", "api-b"):
            port = free_port()
            procs.start(name, [PYTHON, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                               "--port", str(port)], env)
            urls.append(f"http://127.0.0.1:{port}")
        worker = procs.start("worker", celery_worker_argv("client@%h"), env)
        for url in urls:
            wait_ready(url, procs)
        wait_for_log(worker, " ready.")
        yield Stack(urls, procs)
    finally:
        procs.stop_all()
        print(procs.dump_logs())


def epochs_of(events: list[Event]) -> list[int]:
    return [e.epoch for e in events if isinstance(e, EpochEvent)]


def test_round_trip_sync(stack: Stack, notebook_csv: bytes) -> None:
    with Client(stack.urls[0]) as bn:
        ds = bn.datasets.upload(notebook_csv, filename="concertriccir2.csv")
        job = bn.jobs.create(notebook_job("bn", ds.id, epochs=5))
        seen: list[Event] = []
        job.wait(progress=seen.append)
        assert job.status == "succeeded", (job, stack.procs.dump_logs())
        assert epochs_of(seen) == [1, 2, 3, 4, 5]  # every epoch, once, in order
        assert isinstance(seen[0], StatusEvent)
        assert isinstance(seen[-1], DoneEvent)
        history = job.history()
        assert history["epoch"] == [1, 2, 3, 4, 5]
        assert len(history["val_accuracy"]) == 5
        rows = notebook_rows(notebook_csv)[:10]
        prediction = job.predict(rows, checkpoint="best")
        assert len(prediction.classes) == 10
        assert prediction.class_names == ["0", "1"]
        assert prediction.checkpoint.kind == "best"
        assert job.id in [j.id for j in bn.jobs.list(limit=5)]


def test_round_trip_async(stack: Stack) -> None:
    async def go() -> tuple[Any, dict[str, list[Any]], Any]:
        async with AsyncClient(stack.urls[1]) as bn:
            job = await bn.jobs.create({
                "dataset": {"name": "moons", "n_samples": 200, "seed": 1},
                "network": {"hidden": [4], "batchnorm": "after_activation"},
                "training": {"epochs": 4, "batch_size": 32}})
            await job.wait()
            history = await job.history()
            prediction = await job.predict([[0.0, 0.0], [1.0, -0.5]])
            return job, history, prediction

    job, history, prediction = asyncio.run(go())
    assert job.status == "succeeded", job
    assert job.epoch == 4, job
    assert history["epoch"] == [1, 2, 3, 4]
    assert len(prediction.probabilities) == 2


def test_events_resume_on_the_other_api_process(stack: Stack, notebook_csv: bytes) -> None:
    epochs = 40
    with Client(stack.urls[0]) as a, Client(stack.urls[1]) as b:
        ds = a.datasets.upload(notebook_csv)
        job = a.jobs.create(notebook_job("plain", ds.id, epochs=epochs))
        first: list[Event] = []
        for event in a.jobs.events(job.id):
            first.append(event)
            if isinstance(event, EpochEvent) and event.epoch >= 3:
                break  # the connection drops here
        last_id = next(e.id for e in reversed(first) if isinstance(e, EpochEvent))
        rest = list(b.jobs.events(job.id, last_event_id=last_id))
    got = epochs_of(first) + epochs_of(rest)
    assert got == list(range(1, epochs + 1)), got  # no gap, no repeat
    assert isinstance(rest[-1], DoneEvent)
    assert rest[-1].data["status"] == "succeeded"


def bnlab(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BNLAB, *args], capture_output=True, text=True, timeout=120,
                          env=clean_env(BNLAB_URL=url))


def test_cli_submit_watch_exit_codes_and_json(stack: Stack, notebook_csv: bytes,
                                              tmp_path: Path) -> None:
    url = stack.urls[0]
    csv_path = tmp_path / "concertriccir2.csv"
    csv_path.write_bytes(notebook_csv)
    up = bnlab(url, "datasets", "upload", str(csv_path))
    assert up.returncode == 0, up.stderr
    dataset_id = up.stdout.strip()

    good = tmp_path / "good.json"
    good.write_text(json.dumps(notebook_job("bn", dataset_id, epochs=3)))
    ok = bnlab(url, "submit", str(good), "--watch", "--json")
    assert ok.returncode == 0, ok.stderr
    job = json.loads(ok.stdout)
    assert job["status"] == "succeeded"
    assert job["epoch"] == 3

    history = bnlab(url, "history", job["id"], "--json")
    assert json.loads(history.stdout)["epoch"] == [1, 2, 3]
    listed = bnlab(url, "ls", "--json", "--limit", "3")
    assert job["id"] in [j["id"] for j in json.loads(listed.stdout)]

    huge = tmp_path / "huge.csv"
    huge.write_bytes(HUGE_CSV)
    huge_id = bnlab(url, "datasets", "upload", str(huge)).stdout.strip()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": {"id": huge_id}, "network": {"hidden": [4]},
                               "training": {"epochs": 20, "batch_size": 8, "optimizer": {
                                   "name": "sgd", "lr": 10.0, "momentum": 0.9}}}))
    failed = bnlab(url, "submit", str(bad), "--watch", "--json")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    body = json.loads(failed.stdout)
    assert body["status"] == "failed", body
    assert "training diverged" in body["error"], body
    assert bnlab(url, "watch", body["id"]).returncode == 1
    assert bnlab(url, "status", "no-such-id").returncode == 1


def test_experiment_through_the_client(stack: Stack) -> None:
    spec = {"name": "bn-or-not", "seeds": 2,
            "base": {"dataset": {"name": "concentric_circles", "n_samples": 200, "seed": 0},
                     "network": {"hidden": [3, 2]}, "training": {"epochs": 4}},
            "variants": {"network.batchnorm": ["none", "after_activation"]}}
    with Client(stack.urls[0]) as bn:
        exp = bn.experiments.create(spec)
        assert len(exp.children) == 4
        assert exp.variants == ["none", "after_activation"]
        seen: list[Event] = []
        exp.wait(progress=seen.append)
        assert exp.status == "succeeded", (exp, stack.procs.dump_logs())
        per_child: dict[str | None, list[int]] = {}
        for e in seen:
            if isinstance(e, EpochEvent):
                per_child.setdefault(e.job_id, []).append(e.epoch)
        assert per_child == {c.job_id: [1, 2, 3, 4] for c in exp.children}
        listed = {j.id: j for j in bn.jobs.list(experiment_id=exp.id)}
        assert set(listed) == set(per_child)
        assert {(j.variant, j.seed) for j in listed.values()} == {
            (v, s) for v in exp.variants for s in exp.seeds}
        summary = bn.experiments.summary(exp.id)
        assert [c["n_pairs"] for c in summary["comparisons"]
                if c["metric"] == "val_accuracy"] == [2]
        assert bn.experiments.curves(exp.id).startswith(b"\x89PNG")
