from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.db import repository as repo
from models.db.tables import Job, JobStatus, utcnow
from tests.models.db.helpers import SPEC, make_job
from tests.support.epochs import store_epoch


def test_create_job_starts_queued_with_defaults(session: Session) -> None:
    job = make_job(session, warnings=["tiny validation set"], device="auto", queue="gpu")
    got = repo.get_job(session, job_id=job.id)
    assert got is job
    assert len(job.id) == 32
    assert int(job.id, 16) >= 0
    assert job.status == JobStatus.queued
    assert str(job.status) == "queued"
    assert (job.attempts, job.max_attempts, job.epochs_done, job.cancel_requested) == (0, 3, 0,
                                                                                      False)
    assert job.spec == SPEC
    assert job.warnings == ["tiny validation set"]
    assert job.device == "auto"
    assert job.queue == "gpu"
    assert repo.get_job(session, job_id="0" * 32) is None


def test_repository_functions_do_not_commit(session: Session) -> None:
    job = make_job(session)
    job_id = job.id
    session.rollback()
    assert repo.get_job(session, job_id=job_id) is None


def test_bad_queue_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="queue"):
        make_job(session, queue="tpu")


def test_claim_sets_the_lease(session: Session) -> None:
    job = make_job(session)
    assert repo.claim_job(session, job_id=job.id, worker="w1", device="cuda:0")
    assert job.status == JobStatus.running  # the stale identity-map copy was refreshed
    assert (job.worker, job.lease_owner, job.device, job.attempts) == ("w1", "w1", "cuda:0", 1)
    assert job.started_at is not None
    assert job.heartbeat_at is not None


def test_only_a_queued_job_can_be_claimed(session: Session) -> None:
    job = make_job(session)
    assert repo.claim_job(session, job_id=job.id, worker="w1", device="cpu")
    assert not repo.claim_job(session, job_id=job.id, worker="w2", device="cpu")
    assert job.lease_owner == "w1"
    assert job.attempts == 1
    assert not repo.claim_job(session, job_id="f" * 32, worker="w2", device="cpu")


def test_concurrent_claims_exactly_one_wins(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        job_id = make_job(s).id
    barrier = threading.Barrier(4)
    results: list[bool] = []
    errors: list[BaseException] = []

    def claim(worker: str) -> None:
        try:
            barrier.wait(10)
            with sessions.begin() as s:
                results.append(repo.claim_job(s, job_id=job_id, worker=worker, device="cpu"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(results) == [False, False, False, True]
        with sessions() as s:
            job = repo.get_job(s, job_id=job_id)
            assert job is not None
            assert job.attempts == 1
            assert job.status == JobStatus.running
    finally:
        with sessions.begin() as s:
            repo.delete_job(s, job_id=job_id)


def test_heartbeat_and_progress(session: Session) -> None:
    job = make_job(session)
    # not running yet
    assert repo.heartbeat_many(session, job_ids=[job.id], worker="w1") == set()
    repo.claim_job(session, job_id=job.id, worker="w1", device="cpu")
    assert repo.heartbeat_many(session, job_ids=[job.id], worker="w1") == {job.id}
    assert repo.heartbeat_many(session, job_ids=[job.id], worker="intruder") == set()
    assert store_epoch(session, job_id=job.id, epoch=3, metrics={"loss": 1.0})
    assert store_epoch(session, job_id=job.id, epoch=2, metrics={"loss": 1.0})
    session.refresh(job)
    assert job.epochs_done == 3  # never backwards


def test_finish_only_from_running(session: Session) -> None:
    job = make_job(session)
    assert not repo.finish_job(session, job_id=job.id, status="succeeded")
    repo.claim_job(session, job_id=job.id, worker="w1", device="cpu")
    with pytest.raises(ValueError, match="terminal"):
        repo.finish_job(session, job_id=job.id, status="running")
    assert not repo.finish_job(session, job_id=job.id, status="failed", worker="other")
    assert repo.finish_job(session, job_id=job.id, status=JobStatus.succeeded,
                           final_metrics={"val_accuracy": 0.75})
    assert job.status == JobStatus.succeeded
    assert job.finished_at is not None
    assert job.lease_owner is None
    assert job.final_metrics == {"val_accuracy": 0.75}
    assert not repo.finish_job(session, job_id=job.id, status="failed", error="late")
    assert job.status == JobStatus.succeeded
    assert job.error is None


def test_request_cancel_transitions(session: Session) -> None:
    queued, running, done = make_job(session), make_job(session), make_job(session)
    for job in (running, done):
        repo.claim_job(session, job_id=job.id, worker="w", device="cpu")
    repo.finish_job(session, job_id=done.id, status="succeeded")

    assert repo.request_cancel(session, job_id=queued.id) == JobStatus.cancelled
    assert queued.status == JobStatus.cancelled
    assert queued.finished_at is not None
    assert not repo.claim_job(session, job_id=queued.id, worker="w", device="cpu")

    assert not cancel_flag(session, running.id)
    assert repo.request_cancel(session, job_id=running.id) == JobStatus.running
    assert running.cancel_requested
    assert cancel_flag(session, running.id)

    assert repo.request_cancel(session, job_id=done.id) == JobStatus.succeeded
    assert not done.cancel_requested
    assert repo.request_cancel(session, job_id="0" * 32) is None
    assert flags(session, "0" * 32)[2]  # a deleted job stops too (lost)


def flags(session: Session, job_id: str, lease_owner: str | None = None
          ) -> tuple[bool, bool, bool]:
    """(cancel, release, lost) of one job, as the worker reads them (stop_flags_many)."""
    return repo.stop_flags_many(session, job_ids=[job_id], lease_owner=lease_owner)[job_id]


def cancel_flag(session: Session, job_id: str) -> bool:
    """Cancel requested or cancelled: the worker stops the job."""
    return flags(session, job_id)[0]


def test_release_requeues_then_fails_after_max_attempts(session: Session) -> None:
    job = make_job(session, max_attempts=2)
    repo.claim_job(session, job_id=job.id, worker="w1", device="cpu")
    assert repo.release_job(session, job_id=job.id, worker="other") is None
    assert repo.release_job(session, job_id=job.id, worker="w1") == JobStatus.queued
    assert job.lease_owner is None
    assert job.attempts == 1
    repo.claim_job(session, job_id=job.id, worker="w2", device="cpu")
    assert repo.release_job(session, job_id=job.id, error="worker lost") == JobStatus.failed
    assert job.error == "worker lost"
    assert job.attempts == 2


def test_release_of_a_cancel_requested_job_cancels_it(session: Session) -> None:
    job = make_job(session)
    repo.claim_job(session, job_id=job.id, worker="w1", device="cpu")
    repo.request_cancel(session, job_id=job.id)
    assert repo.release_job(session, job_id=job.id) == JobStatus.cancelled


def test_stale_jobs_are_found_by_heartbeat_age(session: Session) -> None:
    fresh, stale = make_job(session), make_job(session)
    for job in (fresh, stale):
        repo.claim_job(session, job_id=job.id, worker="w", device="cpu")
    session.execute(update(Job).where(Job.id == stale.id)
                    .values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    found = {j.id for j in repo.stale_jobs(session, older_than_s=60)}
    assert stale.id in found
    assert fresh.id not in found
    assert fresh.id in {j.id for j in repo.stale_jobs(session, older_than_s=-1)}


def test_queued_jobs_lists_only_queued(session: Session) -> None:
    queued, running = make_job(session), make_job(session)
    repo.claim_job(session, job_id=running.id, worker="w", device="cpu")
    ids = {j.id for j in repo.queued_jobs(session)}
    assert queued.id in ids
    assert running.id not in ids
    assert queued.id not in {j.id for j in repo.queued_jobs(session, older_than_s=3600)}


def test_idempotency_key_is_unique(session: Session) -> None:
    job = make_job(session, idempotency_key="key-1", request_hash="h1")
    assert repo.find_by_idempotency_key(session, idempotency_key="key-1") is job
    assert repo.find_by_idempotency_key(session, idempotency_key="key-2") is None
    with pytest.raises(IntegrityError), session.begin_nested():
        make_job(session, idempotency_key="key-1", request_hash="h1")
    assert repo.find_by_idempotency_key(session, idempotency_key="key-1") is job
    # Jobs without a key never collide.
    make_job(session)
    make_job(session)


def test_list_jobs_pages_cover_every_job_once_newest_first(session: Session) -> None:
    created = [make_job(session, name=f"j{i}") for i in range(7)]
    # Equal created_at for some jobs: the id breaks the tie.
    same = created[0].created_at
    session.execute(update(Job).where(Job.id.in_([j.id for j in created[:3]]))
                    .values(created_at=same))
    session.expire_all()
    seen: list[Job] = []
    cursor: str | None = None
    pages = 0
    while True:
        rows, cursor = repo.list_jobs(session, limit=3, cursor=cursor)
        seen.extend(rows)
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert sorted(j.id for j in seen) == sorted(j.id for j in created)  # each exactly once
    keys = [(j.created_at, j.id) for j in seen]
    assert keys == sorted(keys, reverse=True)  # newest first, ties by id


def test_list_jobs_filters_by_status(session: Session) -> None:
    a, b = make_job(session), make_job(session)
    repo.claim_job(session, job_id=b.id, worker="w", device="cpu")
    running, cursor = repo.list_jobs(session, status="running")
    assert [j.id for j in running] == [b.id]
    assert cursor is None
    assert a.id in {j.id for j in repo.list_jobs(session, status=JobStatus.queued)[0]}


def test_list_jobs_rejects_a_forged_cursor(session: Session) -> None:
    with pytest.raises(repo.InvalidCursor):
        repo.list_jobs(session, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="'sleeping' is not a valid JobStatus"):
        repo.list_jobs(session, status="sleeping")


def test_claim_separates_node_and_lease_owner_and_clears_release(session: Session) -> None:
    job = make_job(session)
    repo.claim_job(session, job_id=job.id, worker="node", device="cpu", lease_owner="node/1/a")
    assert (job.worker, job.lease_owner, job.release_requested) == ("node", "node/1/a", False)
    assert repo.heartbeat_many(session, job_ids=[job.id], worker="node/1/a") == {job.id}
    # same node, other pid
    assert repo.heartbeat_many(session, job_ids=[job.id], worker="node/2/b") == set()


def test_graceful_release_refunds_the_attempt(session: Session) -> None:
    job = make_job(session, max_attempts=1)
    repo.claim_job(session, job_id=job.id, worker="n", device="cpu", lease_owner="n/1/a")
    assert repo.request_release(session, worker="other") == []
    assert repo.request_release(session, worker="n") == [job.id]
    assert flags(session, job.id, "n/1/a") == (False, True, False)
    # attempts (1) == max_attempts, yet a refunded release goes back to queued
    assert repo.release_job(session, job_id=job.id, worker="n/1/a", refund=True) \
        == JobStatus.queued
    assert (job.status, job.attempts, job.release_requested, job.lease_owner) == (
        JobStatus.queued, 0, False, None)
    assert job.error is None
    assert job.finished_at is None


def test_stop_flags_report_cancel_and_a_lost_lease(session: Session) -> None:
    job = make_job(session)
    repo.claim_job(session, job_id=job.id, worker="n", device="cpu", lease_owner="n/1/a")
    assert flags(session, job.id, "n/1/a") == (False, False, False)
    assert flags(session, job.id, "n/2/b") == (False, False, True)
    repo.request_cancel(session, job_id=job.id)
    assert flags(session, job.id, "n/1/a")[0]
    assert flags(session, "0" * 32) == (False, False, True)


def test_release_of_a_stale_job_is_conditional_on_the_heartbeat(session: Session) -> None:
    job = make_job(session)
    repo.claim_job(session, job_id=job.id, worker="n", device="cpu")
    cutoff = utcnow() - timedelta(seconds=60)
    # the worker renewed its lease after the reaper looked: not released
    assert repo.release_job(session, job_id=job.id, stale_before=cutoff) is None
    assert job.status == JobStatus.running
    session.execute(update(Job).where(Job.id == job.id)
                    .values(heartbeat_at=utcnow() - timedelta(minutes=5)))
    assert repo.release_job(session, job_id=job.id, stale_before=cutoff,
                            error="worker lost 1 times") == JobStatus.queued
    assert job.attempts == 1
    assert job.error == "worker lost 1 times"


def test_touch_queued_lets_one_of_two_reapers_win(session: Session) -> None:
    job = make_job(session)
    session.execute(update(Job).where(Job.id == job.id)
                    .values(updated_at=utcnow() - timedelta(minutes=5)))
    cutoff = utcnow() - timedelta(seconds=30)
    assert repo.touch_queued(session, job_id=job.id, untouched_since=cutoff)
    assert not repo.touch_queued(session, job_id=job.id, untouched_since=cutoff)
    repo.request_cancel(session, job_id=job.id)
    assert not repo.touch_queued(session, job_id=job.id)  # cancelled: never touched again


def test_held_by_finds_one_process_jobs_and_make_due_backdates(session: Session) -> None:
    mine, other = make_job(session), make_job(session)
    repo.claim_job(session, job_id=mine.id, worker="n", device="cpu", lease_owner="n/12/a")
    repo.claim_job(session, job_id=other.id, worker="n", device="cpu", lease_owner="n/123/b")
    assert [j.id for j in repo.held_by(session, lease_prefix="n/12/")] == [mine.id]
    assert not repo.make_due(session, job_id=mine.id)  # running: left alone
    repo.release_job(session, job_id=mine.id, worker="n/12/a")
    assert repo.make_due(session, job_id=mine.id)
    assert mine.id in {j.id for j in repo.queued_jobs(session, older_than_s=3600)}
