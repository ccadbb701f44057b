"""Epoch writes batched by time (the worker's default): what a job stores is the same as
writing every epoch, in fewer transactions, and stop requests are still seen."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from models.datasets import class_counts, parse_csv
from models.db import repository as repo
from models.spec import NOTEBOOK_BN_LAYERS, Limits
from models.trainer import EpochRecord
from tests.support.runs import WORKER, add_job, job_state, nb_body, run_at_epoch
from worker.callbacks import DbCallbacks, stack_callbacks
from worker.settings import WorkerSettings
from worker.training_run import RunContext, run_job


@pytest.fixture
def dataset_id(sessions: sessionmaker[Session], notebook_csv: bytes) -> str:
    table = parse_csv(notebook_csv)
    with sessions.begin() as session:
        return repo.create_dataset(
            session, content=notebook_csv, n_rows=table.n_rows, n_features=table.n_features,
            columns=[*table.feature_names, table.label_column], label_column=table.label_column,
            classes=table.classes, class_counts=class_counts(table), filename="c.csv").id


def _claimed(sessions: sessionmaker[Session], n: int = 1, owner: str = "n/1/a") -> list[str]:
    with sessions.begin() as session:
        ids = [repo.create_job(session, spec={}, name=None, epochs_total=50).id
               for _ in range(n)]
        for job_id in ids:
            repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner=owner)
    return ids


def _epochs(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions() as session:
        return [r.epoch for r in repo.history(session, job_id=job_id)]


def _record(epoch: int, **blobs: bytes) -> EpochRecord:
    return EpochRecord(epoch, {"loss": 1.0 / epoch}, 0.01, {}, dict(blobs))


def _content(session: Session, job_id: str, kind: str) -> bytes:
    """The content of a checkpoint that list_checkpoints has just listed."""
    ckpt = repo.get_checkpoint(session, job_id=job_id, kind=kind)
    assert ckpt is not None
    return bytes(ckpt.content)


def test_the_first_epoch_is_written_at_once_and_the_rest_wait_for_the_interval(
        sessions: sessionmaker[Session]) -> None:
    [job_id] = _claimed(sessions)
    cb = DbCallbacks(sessions, job_id, lease_owner="n/1/a", write_interval=3600)
    cb.on_epoch_end(_record(1, last=b"one"))
    assert _epochs(sessions, job_id) == [1]  # progress shows as soon as there is any
    for epoch in range(2, 6):
        cb.on_epoch_end(_record(epoch, best=b"best%d" % epoch, last=b"last%d" % epoch))
    assert _epochs(sessions, job_id) == [1]  # buffered: the interval has not passed

    cb.stack.flush()  # what _train does when training ends
    assert _epochs(sessions, job_id) == [1, 2, 3, 4, 5]
    with sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        assert job is not None
        assert job.epochs_done == 5
        ckpts = {c.kind: (c.epoch, _content(session, job_id, c.kind))
                 for c in repo.list_checkpoints(session, job_id=job_id)}
    assert ckpts == {"best": (5, b"best5"), "last": (5, b"last5")}  # the newest of each


def test_a_due_write_takes_every_buffered_epoch_in_one_transaction(
        sessions: sessionmaker[Session]) -> None:
    [job_id] = _claimed(sessions)
    cb = DbCallbacks(sessions, job_id, lease_owner="n/1/a", write_interval=60)
    commits: list[int] = []
    engine = sessions.kw["bind"]

    def count(_conn: object) -> None:
        commits.append(1)

    event.listen(engine, "commit", count)
    try:
        cb.on_epoch_end(_record(1))
        for epoch in range(2, 5):
            cb.on_epoch_end(_record(epoch))
        assert len(commits) == 1
        assert _epochs(sessions, job_id) == [1]
        assert cb.stack.last_write is not None
        cb.stack.last_write -= 61  # the interval has passed (no sleeping: no flaky timing)
        cb.on_epoch_end(_record(5))
        assert len(commits) == 2
        assert _epochs(sessions, job_id) == [1, 2, 3, 4, 5]
    finally:
        event.remove(engine, "commit", count)


def test_stop_flags_are_read_once_per_interval_and_a_cancel_still_stops_the_job(
        sessions: sessionmaker[Session]) -> None:
    [job_id] = _claimed(sessions)
    cb = DbCallbacks(sessions, job_id, lease_owner="n/1/a", write_interval=60)
    assert not cb.should_stop()  # the first read happens at once
    with sessions.begin() as session:
        repo.request_cancel(session, job_id=job_id)
    assert not cb.should_stop()  # not read again yet
    assert cb.stack.last_read is not None
    cb.stack.last_read -= 61  # the interval has passed
    assert cb.should_stop()
    assert cb.stop_reason == "cancel"


def test_a_batched_stack_writes_each_member_whole_and_drops_a_lost_one(
        sessions: sessionmaker[Session]) -> None:
    ids = _claimed(sessions, 2)
    writer, callbacks = stack_callbacks(sessions, ids, lease_owner="n/1/a",
                                        lost=[threading.Event() for _ in ids], stopping=None,
                                        retry_s=5, write_interval=3600)
    for epoch in (1, 2, 3):
        for cb in callbacks:
            cb.on_epoch_end(_record(epoch, last=cb.job_id.encode()))
    with sessions.begin() as session:  # job 0 moved to another worker meanwhile
        repo.release_job(session, job_id=ids[0])
        repo.claim_job(session, job_id=ids[0], worker="m", device="cpu", lease_owner="m/1/b")
    assert writer.flush() == {ids[0]}
    assert [_epochs(sessions, j) for j in ids] == [[1], [1, 2, 3]]
    assert callbacks[0].lost.is_set()
    assert not callbacks[1].lost.is_set()


@pytest.mark.parametrize("interval", [0.0, 0.05])
def test_a_job_trained_with_batched_writes_stores_every_epoch_once(
        sessions: sessionmaker[Session], dataset_id: str, interval: float) -> None:
    job_id = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS, epochs=40))
    ctx = RunContext(sessions=sessions, worker=WORKER, limits=Limits(),
                     write_interval=interval, small_checkpoint_interval=3600)
    assert run_job(job_id, ctx) == "succeeded"
    job, epochs, ckpts = job_state(sessions, job_id)
    assert epochs == list(range(1, 41))
    assert job.epochs_done == 40
    assert ckpts["last"] == 40
    assert 1 <= ckpts["best"] <= 40


def test_a_batched_job_cancelled_midway_keeps_a_history_that_ends_at_its_checkpoint(
        sessions: sessionmaker[Session], dataset_id: str) -> None:
    job_id = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS,
                                             epochs=5000))
    ctx = RunContext(sessions=sessions, worker=WORKER, limits=Limits(), write_interval=0.1,
                     small_checkpoint_interval=3600)

    def cancel() -> None:  # once a write stored epoch 3 or later; the job waits meanwhile
        with sessions.begin() as session:
            repo.request_cancel(session, job_id=job_id)

    # Read within 0.1 s of training after that: nowhere near 5000 epochs on any machine.
    assert run_at_epoch(ctx, job_id, 3, cancel) == "cancelled"
    job, epochs, ckpts = job_state(sessions, job_id)
    assert 3 <= job.epochs_done < 5000
    assert epochs == list(range(1, job.epochs_done + 1))  # no gap, nothing lost in a buffer
    assert ckpts["last"] == job.epochs_done  # the epoch it stopped at is checkpointed


def test_a_job_that_shows_an_epoch_has_a_last_checkpoint(
        sessions: sessionmaker[Session], dataset_id: str) -> None:
    """The dashboard draws the boundary from "last" as soon as an epoch shows: the first
    epoch, written at once, carries one even when checkpoints and writes are rare."""
    job_id = add_job(sessions, nb_body(dataset_id, layers=NOTEBOOK_BN_LAYERS,
                                             epochs=30))
    ctx = RunContext(sessions=sessions, worker=WORKER, limits=Limits(), write_interval=3600,
                     small_checkpoint_interval=3600)
    seen: list[tuple[int, int | None]] = []

    def look() -> None:  # the first moment any epoch shows (epochs 2.. wait for the end)
        job, _, ckpts = job_state(sessions, job_id)
        seen.append((job.epochs_done, ckpts.get("last")))

    assert run_at_epoch(ctx, job_id, 1, look) == "succeeded"
    assert seen == [(1, 1)]
    assert job_state(sessions, job_id)[1] == list(range(1, 31))


def test_the_defaults_batch_writes_and_poll_the_embedded_broker_often(tmp_path: Path) -> None:
    settings = WorkerSettings(home=tmp_path, broker_url=None)
    assert settings.epoch_write_interval > 0
    assert settings.small_checkpoint_interval > 0
    # kombu's filesystem transport looks at the folder once a second unless told otherwise
    assert settings.celery_transport_options()["polling_interval"] < 1.0
