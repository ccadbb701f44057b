"""Monitoring aggregates (GET /metrics reads them): job counts and epochs in a time window."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db import stats_repo
from models.db.tables import EpochMetric, Job, utcnow
from tests.models.db.helpers import make_job
from tests.support.epochs import store_epoch

LEASE = timedelta(seconds=60)
METRICS = {"loss": 0.5, "accuracy": 0.5, "val_loss": 0.5, "val_accuracy": 0.5}


def with_epochs(session: Session, n: int, *, old: int = 0) -> str:
    """A running job with epochs 1..n, the first `old` of them written ten minutes ago."""
    job = make_job(session)
    assert repo.claim_job(session, job_id=job.id, worker="w", device="cpu")
    for epoch in range(1, n + 1):
        assert store_epoch(session, job_id=job.id, epoch=epoch, metrics=METRICS)
    session.execute(update(EpochMetric)
                    .where(EpochMetric.job_id == job.id, EpochMetric.epoch <= old)
                    .values(created_at=utcnow() - timedelta(minutes=10)))
    return job.id


def test_job_counts_lists_every_status(session: Session) -> None:
    before = stats_repo.job_counts(session)
    assert set(before) == {"queued", "running", "succeeded", "failed", "cancelled"}
    make_job(session)
    running = make_job(session)
    done = make_job(session)
    for job in (running, done):
        assert repo.claim_job(session, job_id=job.id, worker="w", device="cpu")
    assert repo.finish_job(session, job_id=done.id, status="succeeded")

    after = stats_repo.job_counts(session)
    assert {k: after[k] - before[k] for k in after} == {
        "queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0}


def test_epochs_since_counts_rows_written_in_the_window(session: Session) -> None:
    minute, hour = utcnow() - timedelta(minutes=1), utcnow() - timedelta(hours=1)
    base = {since: stats_repo.epochs_since(session, since=since, lease_timeout=LEASE)
            for since in (minute, hour)}
    with_epochs(session, 5, old=3)  # running: epochs 4 and 5 are recent
    finished_now = with_epochs(session, 4)  # all 4 recent, then it finished
    assert repo.finish_job(session, job_id=finished_now, status="succeeded")
    finished_before = with_epochs(session, 6, old=6)  # trained and finished 9 minutes ago
    assert repo.finish_job(session, job_id=finished_before, status="failed")
    nine = utcnow() - timedelta(minutes=9)
    session.execute(update(Job).where(Job.id == finished_before)
                    .values(finished_at=nine, heartbeat_at=nine))
    make_job(session)  # queued, nothing trained

    def new_epochs(since: datetime) -> int:
        return stats_repo.epochs_since(session, since=since, lease_timeout=LEASE) - base[since]

    assert new_epochs(minute) == 2 + 4
    assert new_epochs(hour) == 5 + 4 + 6  # every job's whole history
    assert stats_repo.epochs_since(session, since=utcnow() + timedelta(seconds=1),
                                   lease_timeout=LEASE) == 0
