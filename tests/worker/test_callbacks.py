"""DbCallbacks fencing: a process whose lease was taken over writes nothing."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.tables import Job
from models.trainer import EpochRecord
from worker.callbacks import NO_FLAGS, DbCallbacks, Flags, LeaseLost, StackWriter, stack_callbacks


def _job(session: Session, job_id: str) -> Job:
    job = repo.get_job(session, job_id=job_id)
    assert job is not None
    return job


def _last(session: Session, job_id: str) -> bytes:
    """The content of the job's last checkpoint, which the test has written."""
    ckpt = repo.get_checkpoint(session, job_id=job_id, kind="last")
    assert ckpt is not None
    return bytes(ckpt.content)


def test_a_zombie_writes_nothing_into_a_job_someone_else_runs(
        sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/2/new")
    zombie = DbCallbacks(sessions, job_id, lease_owner="n/1/old")
    owner = DbCallbacks(sessions, job_id, lease_owner="n/2/new")
    record = EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": b"zombie"})

    assert zombie.should_stop()
    assert zombie.stop_reason == "lost"
    with pytest.raises(LeaseLost):
        zombie.on_epoch_end(record)

    with sessions() as session:
        assert repo.history(session, job_id=job_id) == []
        assert repo.list_checkpoints(session, job_id=job_id) == []
        assert _job(session, job_id).epochs_done == 0
    assert not owner.should_stop()
    owner.on_epoch_end(EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": b"real"}))
    with sessions() as session:
        assert _last(session, job_id) == b"real"


def test_should_stop_says_why(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/1/a")
    callbacks = DbCallbacks(sessions, job_id, lease_owner="n/1/a")
    assert not callbacks.should_stop()
    assert callbacks.stop_reason is None
    with sessions.begin() as session:
        repo.request_release(session, worker="n")
    assert callbacks.should_stop()
    assert callbacks.stop_reason == "release"
    with sessions.begin() as session:
        repo.request_cancel(session, job_id=job_id)
    assert callbacks.should_stop()
    assert callbacks.stop_reason == "cancel"


def test_stop_flags_come_by_name(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        job_id = repo.create_job(session, spec={}, name=None, epochs_total=3).id
        repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner="n/1/a")
        repo.request_cancel(session, job_id=job_id)
    writer = StackWriter(sessions, lease_owner="n/1/a")
    writer.join(job_id, threading.Event())
    writer.join("0" * 32, threading.Event())  # no such job: lost
    flags, generation = writer.flags_of(job_id, 0)
    assert flags == Flags(cancel=True, release=False, lost=False)
    assert flags.cancel
    assert writer.flags_of("0" * 32, generation)[0].lost
    assert writer.flags_of("f" * 32, generation)[0] == NO_FLAGS  # not a member: never read


def _stack(sessions: sessionmaker[Session], n: int, owner: str = "n/1/a"
           ) -> tuple[list[str], list[DbCallbacks]]:
    with sessions.begin() as session:
        ids = [repo.create_job(session, spec={}, name=None, epochs_total=3).id for _ in range(n)]
        for job_id in ids:
            repo.claim_job(session, job_id=job_id, worker="n", device="cpu", lease_owner=owner)
    _, callbacks = stack_callbacks(sessions, ids, lease_owner=owner,
                                   lost=[threading.Event() for _ in ids], stopping=None,
                                   retry_s=5)
    return ids, callbacks


def _epochs(sessions: sessionmaker[Session], job_id: str) -> list[int]:
    with sessions() as session:
        return [r.epoch for r in repo.history(session, job_id=job_id)]


def test_a_stack_writes_an_epoch_once_every_member_reported_it(
        sessions: sessionmaker[Session]) -> None:
    ids, callbacks = _stack(sessions, 3)
    for cb in callbacks[:2]:
        cb.on_epoch_end(EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": cb.job_id.encode()}))
    assert [_epochs(sessions, j) for j in ids] == [[], [], []]  # buffered
    callbacks[2].on_epoch_end(EpochRecord(1, {"loss": 0.4}, 0.1, {}, {}))
    assert [_epochs(sessions, j) for j in ids] == [[1], [1], [1]]
    with sessions() as session:
        assert _last(session, ids[0]) == ids[0].encode()
        assert [_job(session, j).epochs_done for j in ids] == [1, 1, 1]

    # Member 1 stops (it reports no epoch 2): the others' epoch 2 waits until one of them
    # moves on, then is written without it.
    for cb in (callbacks[0], callbacks[2]):
        cb.on_epoch_end(EpochRecord(2, {"loss": 0.3}, 0.1, {}, {}))
    assert _epochs(sessions, ids[0]) == [1]
    callbacks[0].on_epoch_end(EpochRecord(3, {"loss": 0.2}, 0.1, {}, {}))
    assert [_epochs(sessions, j) for j in ids] == [[1, 2], [1], [1, 2]]
    callbacks[2].on_epoch_end(EpochRecord(3, {"loss": 0.2}, 0.1, {}, {}))  # complete again
    assert [_epochs(sessions, j) for j in ids] == [[1, 2, 3], [1], [1, 2, 3]]


def test_a_stack_member_whose_lease_moved_stops_alone(sessions: sessionmaker[Session]) -> None:
    ids, callbacks = _stack(sessions, 2)
    with sessions.begin() as session:  # the reaper gave job 0 to another worker meanwhile
        repo.release_job(session, job_id=ids[0])
        repo.claim_job(session, job_id=ids[0], worker="m", device="cpu", lease_owner="m/1/b")
    assert callbacks[0].should_stop()
    assert callbacks[0].stop_reason == "lost"
    assert not callbacks[1].should_stop()
    for cb in callbacks:  # no LeaseLost: the stack's other member trains on
        cb.on_epoch_end(EpochRecord(1, {"loss": 0.5}, 0.1, {}, {"last": b"zombie"}))
    assert callbacks[0].lost.is_set()
    assert not callbacks[1].lost.is_set()
    assert [_epochs(sessions, j) for j in ids] == [[], [1]]
    with sessions() as session:
        assert repo.list_checkpoints(session, job_id=ids[0]) == []

    with sessions.begin() as session:
        repo.request_cancel(session, job_id=ids[1])
    assert callbacks[1].should_stop()
    assert callbacks[1].stop_reason == "cancel"
