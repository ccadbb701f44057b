"""The reaper against a real database and real broker transports (filesystem and Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from models.db import make_engine, session_factory
from models.db import repository as repo
from models.db.tables import Job, utcnow
from models.queueing import TRAIN_TASK
from tests.support.db import migrated_sqlite
from worker.celery_app import create_app
from worker.reaper import Reaper, broker_messages, redis_messages, release_dead_process
from worker.settings import WorkerSettings

SPEC: dict[str, Any] = {"dataset": {"name": "moons", "n_samples": 64},
                        "network": {"hidden": [4]}, "training": {"epochs": 2}}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WorkerSettings:
    for var in ("BNLAB_DATABASE_URL", "BNLAB_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    settings = WorkerSettings(home=tmp_path)
    settings.prepare_dirs()
    return settings


@pytest.fixture
def sessions(settings: WorkerSettings) -> Iterator[sessionmaker[Session]]:
    migrated_sqlite(settings.sqlalchemy_url)
    engine = make_engine(settings.sqlalchemy_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def app(settings: WorkerSettings) -> Iterator[Celery]:
    app = create_app(settings)
    yield app
    app.close()


def send(app: Celery) -> Any:
    return lambda job_id, queue: app.send_task(TRAIN_TASK, args=[job_id], queue=queue)


@pytest.fixture
def reaper(sessions: sessionmaker[Session], settings: WorkerSettings, app: Celery) -> Reaper:
    return Reaper(sessions, send(app), broker_messages(settings), lease_timeout=60,
                  requeue_grace=30)


def queue_files(settings: WorkerSettings) -> list[Path]:
    return sorted(Path(settings.celery_transport_options()["data_folder_in"]).glob("*.msg"))


def new_job(sessions: sessionmaker[Session], *, max_attempts: int = 3) -> str:
    with sessions.begin() as session:
        return repo.create_job(session, spec=SPEC, name=None, epochs_total=2,
                               max_attempts=max_attempts).id


def age(sessions: sessionmaker[Session], job_id: str, **columns_ago: float) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            **{col: utcnow() - timedelta(seconds=s) for col, s in columns_ago.items()}))


def claim_as_dead_worker(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        assert repo.claim_job(session, job_id=job_id, worker="gone@host", device="cpu",
                              lease_owner="gone@host/1/aa")
    age(sessions, job_id, heartbeat_at=300)


def get(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        assert job is not None
        return job


def test_stale_running_job_is_released_and_enqueued_but_a_live_one_is_not(
        reaper: Reaper, sessions: sessionmaker[Session], settings: WorkerSettings) -> None:
    stale, live = new_job(sessions), new_job(sessions)
    claim_as_dead_worker(sessions, stale)
    with sessions.begin() as session:
        repo.claim_job(session, job_id=live, worker="alive@host", device="cpu")

    done = reaper.sweep()

    assert done.requeued_lost == [stale]
    job = get(sessions, stale)
    assert str(job.status) == "queued"
    assert job.attempts == 1
    assert job.lease_owner is None
    assert job.error is not None
    assert job.error.startswith("worker lost 1 times (last seen on gone@host at ")
    assert len(queue_files(settings)) == 1
    assert stale in reaper.broker_messages()
    assert str(get(sessions, live).status) == "running"
    assert reaper.sweep().requeued_lost == []  # nothing more to do


def test_a_dead_process_jobs_are_released_at_once_and_due_for_the_next_sweep(
        reaper: Reaper, sessions: sessionmaker[Session]) -> None:
    dead, sibling = new_job(sessions), new_job(sessions)
    with sessions.begin() as session:
        repo.claim_job(session, job_id=dead, worker="gone@host", device="cpu",
                       lease_owner="gone@host/1/aa")
        repo.claim_job(session, job_id=sibling, worker="gone@host", device="cpu",
                       lease_owner="gone@host/12/bb")  # another process (pid 12) of the node

    assert release_dead_process(sessions, node="gone@host", pid=1) == [dead]

    job = get(sessions, dead)
    assert str(job.status) == "queued"
    assert job.attempts == 1
    assert job.lease_owner is None
    assert job.error is not None
    assert job.error.startswith("worker lost 1 times (last seen on gone@host at ")
    assert str(get(sessions, sibling).status) == "running"
    assert reaper.sweep().requeued_orphans == [dead]  # due at once, not after the grace


def test_a_job_lost_max_attempts_times_fails_with_that_reason(
        reaper: Reaper, sessions: sessionmaker[Session], settings: WorkerSettings) -> None:
    job_id = new_job(sessions, max_attempts=2)
    for attempt in (1, 2):
        claim_as_dead_worker(sessions, job_id)
        reaper.sweep()
        assert get(sessions, job_id).attempts == attempt

    job = get(sessions, job_id)
    assert str(job.status) == "failed"
    assert job.finished_at is not None
    assert job.error is not None
    assert job.error.startswith("worker lost 2 times (last seen on gone@host at "), job.error
    assert len(queue_files(settings)) == 1  # only the first loss was re-enqueued


def test_orphaned_queued_job_is_enqueued_once_and_a_held_one_is_left_alone(
        reaper: Reaper, sessions: sessionmaker[Session], settings: WorkerSettings,
        app: Celery) -> None:
    orphan, held, young = new_job(sessions), new_job(sessions), new_job(sessions)
    send(app)(held, "cpu")
    age(sessions, orphan, updated_at=120)
    age(sessions, held, updated_at=120)

    done = reaper.sweep()

    assert done.requeued_orphans == [orphan]  # `young` is inside the grace period
    held_now = reaper.broker_messages()
    assert orphan in held_now
    assert held in held_now
    assert young not in held_now
    assert len(queue_files(settings)) == 2
    assert reaper.sweep().requeued_orphans == []  # touched (and now held): not sent again
    assert len(queue_files(settings)) == 2


def test_cancelled_jobs_are_never_touched(
        reaper: Reaper, sessions: sessionmaker[Session], settings: WorkerSettings) -> None:
    queued, running = new_job(sessions), new_job(sessions)
    claim_as_dead_worker(sessions, running)
    with sessions.begin() as session:
        repo.request_cancel(session, job_id=queued)
        repo.request_cancel(session, job_id=running)
    age(sessions, queued, updated_at=600)

    done = reaper.sweep()

    assert done.requeued_lost == done.requeued_orphans == []
    assert queue_files(settings) == []
    assert str(get(sessions, queued).status) == "cancelled"
    assert str(get(sessions, running).status) == "cancelled"  # its worker is gone: cancelled


@pytest.fixture
def empty_redis(redis_url: str) -> Iterator[str]:
    """The session's Redis db, emptied before and after: a test that takes "the" message of a
    queue must not take one an earlier test left there."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()


def test_redis_messages_sees_waiting_messages(empty_redis: str, tmp_path: Path) -> None:
    redis_url = empty_redis
    settings = WorkerSettings(home=tmp_path, broker_url=redis_url)
    app = create_app(settings)
    try:
        app.send_task(TRAIN_TASK, args=["f" * 32], queue="gpu")
        assert "f" * 32 in redis_messages(redis_url)
        assert "e" * 32 not in broker_messages(settings)()
    finally:
        app.close()


def test_redis_messages_tells_a_stranded_delivery_from_a_recent_one(
        empty_redis: str, tmp_path: Path) -> None:
    """A message taken and never acknowledged (its consumer died before the claim) counts as
    held while it is younger than the bound and as stranded after it."""
    redis_url = empty_redis
    settings = WorkerSettings(home=tmp_path, broker_url=redis_url)
    app = create_app(settings)
    job_id = "a" * 32
    try:
        app.send_task(TRAIN_TASK, args=[job_id], queue="cpu")
        with app.connection_for_read() as conn:
            taken = conn.SimpleQueue("cpu").get(timeout=10)  # delivered, not acknowledged
            recent = redis_messages(redis_url, stranded_after_s=3600)
            assert job_id in recent
            assert job_id not in recent.stranded
            stranded = redis_messages(redis_url, stranded_after_s=0)
            assert job_id not in stranded
            assert job_id in stranded.stranded
            taken.ack()
        assert job_id not in redis_messages(redis_url, stranded_after_s=0).stranded
    finally:
        app.close()


def test_a_queued_job_whose_message_is_stranded_is_enqueued_again(
        empty_redis: str, tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    redis_url = empty_redis
    settings = WorkerSettings(home=tmp_path, broker_url=redis_url)
    app = create_app(settings)
    job_id = new_job(sessions)
    age(sessions, job_id, updated_at=120)
    reaper = Reaper(sessions, send(app), lambda: redis_messages(redis_url, stranded_after_s=0),
                    lease_timeout=60, requeue_grace=30)
    try:
        send(app)(job_id, "cpu")
        with app.connection_for_read() as conn:
            taken = conn.SimpleQueue("cpu").get(timeout=10)
            done = reaper.sweep()
            assert done.requeued_orphans == [job_id]
            assert job_id in redis_messages(redis_url, stranded_after_s=3600)  # sent again
            assert reaper.sweep().requeued_orphans == []  # touched: not sent twice
            taken.ack()
    finally:
        app.close()
