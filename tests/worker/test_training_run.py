"""The task body (worker.training_run.run_job) against a real SQLite database, no Celery."""

from __future__ import annotations

import _thread
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from devtools.poll import poll_until
from models.datasets import class_counts, parse_csv
from models.db import repository as repo
from models.db.tables import Job
from models.resolution import activation_bytes, resolve_network
from models.spec import NOTEBOOK_BN_LAYERS, NOTEBOOK_PLAIN_LAYERS, JobSpec, Limits
from tests.support.epochs import store_epoch
from tests.support.runs import WORKER, add_job, job_state, nb_body, run_at_epoch
from worker.training_run import RunContext, failure_reason, run_job


@pytest.fixture
def ctx(sessions: sessionmaker[Session]) -> RunContext:
    return RunContext(sessions=sessions, worker=WORKER, limits=Limits())


@pytest.fixture
def dataset_id(sessions: sessionmaker[Session], notebook_csv: bytes) -> str:
    table = parse_csv(notebook_csv)
    with sessions.begin() as session:
        row = repo.create_dataset(
            session, content=notebook_csv, n_rows=table.n_rows, n_features=table.n_features,
            columns=[*table.feature_names, table.label_column], label_column=table.label_column,
            classes=table.classes, class_counts=class_counts(table), filename="c.csv")
        return row.id


def test_succeeded_job_has_every_epoch_checkpoints_and_metrics(
        ctx: RunContext, sessions: sessionmaker[Session], dataset_id: str) -> None:
    job_id = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS, epochs=4))

    assert run_job(job_id, ctx) == "succeeded"

    job, epochs, ckpts = job_state(sessions, job_id)
    assert str(job.status) == "succeeded"
    assert job.error is None
    assert epochs == [1, 2, 3, 4]
    assert job.epochs_done == 4
    assert ckpts["last"] == 4
    assert 1 <= ckpts["best"] <= 4
    assert job.worker == WORKER
    assert job.device == "cpu"
    assert job.attempts == 1
    assert job.started_at is not None
    assert job.finished_at is not None
    assert set(job.final_metrics) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert 0.0 <= job.final_metrics["val_accuracy"] <= 1.0
    assert job.best_epoch == ckpts["best"]


def test_the_builtin_notebook_dataset_trains_as_its_uploaded_csv(
        ctx: RunContext, sessions: sessionmaker[Session], dataset_id: str) -> None:
    uploaded = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS, epochs=3))
    builtin_body = nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS, epochs=3)
    builtin_body["dataset"] = {"name": "concertriccir2"}
    builtin = add_job(sessions, builtin_body)

    assert run_job(uploaded, ctx) == run_job(builtin, ctx) == "succeeded"

    with sessions() as session:
        histories = [[(r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy)
                      for r in repo.history(session, job_id=job_id)]
                     for job_id in (uploaded, builtin)]
    assert len(histories[0]) == 3
    assert histories[0] == histories[1]


def test_second_delivery_of_the_same_job_does_nothing(
        ctx: RunContext, sessions: sessionmaker[Session], dataset_id: str) -> None:
    job_id = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_PLAIN_LAYERS, epochs=2))
    assert run_job(job_id, ctx) == "succeeded"
    before = job_state(sessions, job_id)

    assert run_job(job_id, ctx) is None
    assert run_job("no-such-job", ctx) is None

    after = job_state(sessions, job_id)
    assert after[1:] == before[1:] == ([1, 2], {"best": before[2]["best"], "last": 2})
    assert after[0].attempts == 1
    assert after[0].finished_at == before[0].finished_at


@pytest.mark.parametrize(("body", "reason"), [
    # 3 classes, 1 sigmoid unit: resolve_job re-checks what the API checked
    ({"dataset": {"name": "blobs", "n_classes": 3, "n_samples": 60},
      "network": {"layers": [{"type": "dense", "units": 1, "activation": "sigmoid"}]},
      "training": {"epochs": 2}}, "3 classes"),
    ({"dataset": {"name": "moons", "n_samples": 60}, "network": {"hidden": [4]},
      "training": {"epochs": 2}, "device": "cuda:7"}, "cuda"),
    ({"dataset": {"id": "gone"}, "network": {"hidden": [4]}, "training": {"epochs": 2}},
     "no longer exists"),
])
def test_failure_is_recorded_with_a_readable_reason(
        ctx: RunContext, sessions: sessionmaker[Session], body: dict[str, Any],
        reason: str) -> None:
    job_id = add_job(sessions, body)

    assert run_job(job_id, ctx) == "failed"

    job, epochs, _ = job_state(sessions, job_id)
    assert str(job.status) == "failed"
    assert job.finished_at is not None
    assert reason in job.error, job.error
    assert "Traceback" not in job.error, job.error
    assert epochs == []


def test_unexpected_errors_name_their_type() -> None:
    assert failure_reason(KeyError("x")) == "KeyError: 'x'"
    assert failure_reason(RuntimeError("boom\nmore detail")) == "RuntimeError: boom"
    assert failure_reason(MemoryError()).startswith("out of memory")


def test_cancel_stops_a_running_job_and_keeps_its_history(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    epochs_total = 50
    job_id = add_job(sessions, {"dataset": {"name": "moons", "n_samples": 64},
                                "network": {"hidden": [4]},
                                "training": {"epochs": epochs_total, "batch_size": 32}})

    def cancel() -> None:
        with sessions.begin() as session:
            assert str(repo.request_cancel(session, job_id=job_id)) == "running"

    assert run_at_epoch(ctx, job_id, 2, cancel) == "cancelled"

    job, epochs, ckpts = job_state(sessions, job_id)
    assert str(job.status) == "cancelled"
    assert job.error is None
    # the flag is read at the next epoch's end, which is recorded (and checkpointed)
    assert len(epochs) == 3
    assert epochs == list(range(1, len(epochs) + 1))  # no gaps
    assert ckpts["last"] == epochs[-1]


def test_interrupted_job_goes_back_to_the_queue(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, {"dataset": {"name": "moons", "n_samples": 64},
                                "network": {"hidden": [4]},
                                "training": {"epochs": 50, "batch_size": 32}})

    # A real KeyboardInterrupt (SIGINT's handler) in the thread running the job, which is
    # this one, once epoch 1 is stored: raised as soon as the hook returns, mid-training.
    with pytest.raises(KeyboardInterrupt):
        run_at_epoch(ctx, job_id, 1, _thread.interrupt_main)

    job = job_state(sessions, job_id)[0]
    assert str(job.status) == "queued"
    assert job.attempts == 1
    assert "KeyboardInterrupt" in job.error


MOONS: dict[str, Any] = {"dataset": {"name": "moons", "n_samples": 96},
                         "network": {"hidden": [8], "batchnorm": "before_activation"},
                         "training": {"epochs": 8, "batch_size": 32, "seed": 3}}


def metrics_of(sessions: sessionmaker[Session], job_id: str) -> list[tuple[Any, ...]]:
    with sessions() as session:
        return [(r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy, r.lr)
                for r in repo.history(session, job_id=job_id)]


def run_until(ctx: RunContext, job_id: str, epochs: int, then: Callable[[], None]
              ) -> list[str | None]:
    """run_job; once `epochs` epochs are stored, `then()` runs before training goes on."""
    return [run_at_epoch(ctx, job_id, epochs, then)]


def test_shutdown_releases_the_job_and_the_next_run_resumes_it_exactly(
        ctx: RunContext, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    reference = add_job(sessions, MOONS)
    assert run_job(reference, ctx) == "succeeded"
    job_id = add_job(sessions, MOONS)
    stopping = threading.Event()
    first = replace(ctx, stopping=stopping)

    caplog.set_level(logging.INFO)
    assert run_until(first, job_id, 2, stopping.set) == ["queued"]

    job, epochs, ckpts = job_state(sessions, job_id)
    k = epochs[-1]
    assert str(job.status) == "queued"
    assert job.attempts == 0
    assert job.error is None
    assert job.lease_owner is None
    assert job.updated_at < job.created_at  # due for the next reaper sweep at once
    assert k == 3
    assert epochs == list(range(1, k + 1))
    assert ckpts["last"] == k
    # a lost attempt that checkpointed less often left rows past the checkpoint
    with sessions.begin() as session:
        for extra in (k + 1, k + 2):
            store_epoch(session, job_id=job_id, epoch=extra, metrics={"loss": 99.0})

    assert run_job(job_id, ctx) == "succeeded"

    assert f"resuming job {job_id} from epoch {k}" in caplog.text
    job, epochs, _ = job_state(sessions, job_id)
    assert epochs == list(range(1, 9))
    assert job.attempts == 1
    assert metrics_of(sessions, job_id) == metrics_of(sessions, reference)  # bitwise


def test_a_worker_that_lost_its_lease_writes_nothing_more(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, {**MOONS, "training": {**MOONS["training"], "epochs": 50}})

    stored_at_takeover: list[int] = []

    def take_over() -> None:
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(lease_owner="other/1/x", worker="other"))
            # Counted inside the takeover's transaction, which holds the write lock: every
            # epoch committed before the lease moved, and none after.
            stored_at_takeover.append(len(repo.history(session, job_id=job_id)))

    assert run_until(ctx, job_id, 2, take_over) == [None]

    job, epochs, _ = job_state(sessions, job_id)
    assert str(job.status) == "running"
    assert job.lease_owner == "other/1/x"
    # fencing: once the lease moved, the old worker got no epoch in, not even the one in flight
    assert stored_at_takeover == [2]
    assert epochs == [1, 2]
    assert job.finished_at is None


def test_duplicate_delivery_while_the_lease_is_live_is_ignored(
        ctx: RunContext, sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    job_id = add_job(sessions, MOONS)
    with sessions.begin() as session:
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/9/abc")
    caplog.set_level(logging.INFO)

    assert run_job(job_id, ctx) is None

    assert (f"job {job_id} is running under n/9/abc (lease live); ignoring duplicate delivery"
            in caplog.text)
    job, epochs, _ = job_state(sessions, job_id)
    assert job.attempts == 1
    assert job.lease_owner == "n/9/abc"
    assert epochs == []


def test_the_lease_heartbeat_moves_while_training(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    job_id = add_job(sessions, {**MOONS, "training": {**MOONS["training"], "epochs": 50}})
    fast = replace(ctx, heartbeat_interval=0.05)
    seen: list[Any] = []

    def heartbeat() -> Any:
        return job_state(sessions, job_id)[0].heartbeat_at

    def watch_then_cancel() -> None:
        # The training waits here, writing nothing: only the lease keeper moves the heartbeat.
        seen.append(heartbeat())
        for _ in range(2):
            seen.append(poll_until(heartbeat, lambda at: at > seen[-1], what="renewed heartbeat",
                                   timeout=120.0, interval=0.02))
        with sessions.begin() as session:
            repo.request_cancel(session, job_id=job_id)

    assert run_until(fast, job_id, 1, watch_then_cancel) == ["cancelled"]
    assert seen[0] < seen[1] < seen[2]


def test_divergence_names_the_epoch_and_the_kept_checkpoint(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    rows = "\n".join(f"{(i % 7 - 3) * 1e30},{(i % 5 - 2) * 1e30},{i % 2}" for i in range(64))
    content = f"a,b,label\n{rows}\n".encode()
    table = parse_csv(content)
    with sessions.begin() as session:
        dataset_id = repo.create_dataset(
            session, content=content, n_rows=table.n_rows, n_features=table.n_features,
            columns=["a", "b", "label"], label_column="label", classes=table.classes,
            class_counts=class_counts(table), filename="huge.csv").id
    job_id = add_job(sessions, {"dataset": {"id": dataset_id}, "network": {"hidden": [4]},
                                "training": {"epochs": 20, "batch_size": 8, "optimizer": {
                                    "name": "sgd", "lr": 10.0, "momentum": 0.9}}})

    assert run_job(job_id, ctx) == "failed"

    job, epochs, ckpts = job_state(sessions, job_id)
    k = len(epochs) + 1
    assert re.match(rf"training diverged: loss is (nan|inf) at epoch {k}; ", job.error), job.error
    if epochs:
        assert f"the last good checkpoint (epoch {k - 1}) is kept" in job.error
        assert ckpts["last"] == k - 1
    else:
        assert "no checkpoint was written before it" in job.error


def add_stack(sessions: sessionmaker[Session], body: dict[str, Any], seeds: list[int],
              key: str = "k" * 32) -> list[str]:
    """Jobs that differ only by seed, sharing a stack key (what an experiment creates)."""
    ids = []
    with sessions.begin() as session:
        for i, seed in enumerate(seeds):
            spec = JobSpec.model_validate({**body, "training": {**body["training"],
                                                                 "seed": seed}})
            ids.append(repo.create_job(
                session, spec=spec.model_dump(mode="json"), name=spec.name,
                epochs_total=spec.training.epochs, device=spec.device, seed=seed,
                child_index=i, stack_key=key).id)
    return ids


def test_a_stack_trains_together_and_each_member_ends_on_its_own(
        sessions: sessionmaker[Session], ctx: RunContext, dataset_id: str) -> None:
    body = nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS, epochs=3)
    ids = add_stack(sessions, body, [0, 1, 2, 3])
    with sessions.begin() as session:  # one member was cancelled before it started
        repo.request_cancel(session, job_id=ids[3])
    assert run_job(ids[1], replace(ctx, max_stack=2)) == "succeeded"
    states = [job_state(sessions, j) for j in ids]
    # the message's job and the first queued sibling (max_stack 2); the rest wait
    assert [s[0].status for s in states] == ["succeeded", "succeeded", "queued", "cancelled"]
    assert states[0][1] == states[1][1] == [1, 2, 3]
    assert states[0][0].lease_owner is None
    assert states[0][0].worker == WORKER
    assert states[0][0].final_metrics != states[1][0].final_metrics  # different seeds
    assert run_job(ids[2], ctx) == "succeeded"  # alone now
    assert job_state(sessions, ids[2])[1] == [1, 2, 3]


def test_a_stack_claims_only_siblings_that_resume_from_the_same_epoch(
        sessions: sessionmaker[Session], ctx: RunContext, dataset_id: str) -> None:
    body = nb_body(dataset_id, layers=NOTEBOOK_PLAIN_LAYERS, epochs=3)
    ids = add_stack(sessions, body, [0, 1, 2])
    # ids[0] ran 2 epochs on a worker that died; ids[1] ran 1; ids[2] never started
    with sessions.begin() as session:
        for job_id, epochs in ((ids[0], 2), (ids[1], 1)):
            assert repo.claim_job(session, job_id=job_id, worker="dead", device="cpu")
            for e in range(1, epochs + 1):
                store_epoch(session, job_id=job_id, epoch=e, metrics={"loss": 1.0})
                repo.put_checkpoint(session, job_id=job_id, kind="last", epoch=e,
                                    content=b"x")
            assert repo.release_job(session, job_id=job_id) == "queued"
    assert run_job(ids[2], ctx) == "succeeded"  # from scratch: neither sibling matches
    assert [job_state(sessions, j)[0].status for j in ids] == ["queued", "queued", "succeeded"]


def test_cancelling_one_stacked_member_stops_only_it(
        ctx: RunContext, sessions: sessionmaker[Session]) -> None:
    epochs_total = 20
    body = {"dataset": {"name": "moons", "n_samples": 64}, "network": {"hidden": [4]},
            "training": {"epochs": epochs_total, "batch_size": 32}}
    ids = add_stack(sessions, body, [0, 1, 2])

    def cancel() -> None:
        with sessions.begin() as session:
            assert str(repo.request_cancel(session, job_id=ids[1])) == "running"

    assert run_at_epoch(ctx, ids[0], 2, cancel, watch=ids[1]) == "succeeded"

    states = [job_state(sessions, j) for j in ids]
    assert [str(s[0].status) for s in states] == ["succeeded", "cancelled", "succeeded"]
    for _job, epochs, ckpts in states:
        assert epochs == list(range(1, len(epochs) + 1))
        assert ckpts["last"] == epochs[-1]
    assert len(states[0][1]) == len(states[2][1]) == epochs_total
    assert len(states[1][1]) == 3  # cancelled at epoch 2's write, stopped at epoch 3's end


def test_a_stack_holds_no_more_models_than_fit_the_activation_limit(
        sessions: sessionmaker[Session], ctx: RunContext) -> None:
    body = {"dataset": {"name": "digits"},
            "network": {"conv": [4], "pool": "max", "batchnorm": "before_activation"},
            "training": {"epochs": 1, "batch_size": 32, "split": "stratified"}}
    spec = JobSpec.model_validate(body)
    one = activation_bytes(resolve_network(spec.network, (1, 8, 8), 10), 32)
    ids = add_stack(sessions, body, [0, 1, 2, 3])
    limits = replace(ctx.limits, max_activation_bytes=int(2.5 * one))
    assert run_job(ids[0], replace(ctx, limits=limits)) == "succeeded"
    # two models' layer outputs fit the limit, three do not: the rest wait for their messages
    assert [job_state(sessions, j)[0].status for j in ids] == [
        "succeeded", "succeeded", "queued", "queued"]
