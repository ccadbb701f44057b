"""DbCallbacks fencing: a process whose lease was taken over writes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.trainer import EpochRecord
from worker.callbacks import DbCallbacks, LeaseLost


def test_a_zombie_writes_nothing_into_a_job_someone_else_runs(
        sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/2/new")
    zombie = DbCallbacks(sessions, job_id, lease_owner="n/1/old")
    owner = DbCallbacks(sessions, job_id, lease_owner="n/2/new")
    record = EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": b"zombie"})

    assert zombie.should_stop() and zombie.stop_reason == "lost"
    with pytest.raises(LeaseLost):
        zombie.on_epoch_end(record)

    with sessions() as session:
        assert repo.history(session, job_id=job_id) == []
        assert repo.list_checkpoints(session, job_id=job_id) == []
        assert repo.get_job(session, job_id=job_id).epochs_done == 0
    assert not owner.should_stop()
    owner.on_epoch_end(EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": b"real"}))
    with sessions() as session:
        assert bytes(repo.get_checkpoint(session, job_id=job_id, kind="last").content) == b"real"


def test_should_stop_says_why(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/1/a")
    callbacks = DbCallbacks(sessions, job_id, lease_owner="n/1/a")
    assert not callbacks.should_stop() and callbacks.stop_reason is None
    with sessions.begin() as session:
        repo.request_release(session, worker="n")
    assert callbacks.should_stop() and callbacks.stop_reason == "release"
    with sessions.begin() as session:
        repo.request_cancel(session, job_id=job_id)
    assert callbacks.should_stop() and callbacks.stop_reason == "cancel"  # cancel wins
