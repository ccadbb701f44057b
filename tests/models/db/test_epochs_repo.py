from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db.tables import EpochMetric
from tests.models.db.helpers import make_job
from tests.support.epochs import store_epoch

METRICS = {"loss": 0.7, "accuracy": 0.5, "val_loss": 0.69, "val_accuracy": 0.56, "lr": 1e-3}


def test_replaying_an_epoch_is_harmless(session: Session) -> None:
    job = make_job(session)
    assert store_epoch(session, job_id=job.id, epoch=1, metrics=METRICS, wall_time=0.1)
    assert not store_epoch(session, job_id=job.id, epoch=1,
                                 metrics={**METRICS, "loss": 99.0}, wall_time=5.0)
    count = session.scalar(select(func.count()).select_from(EpochMetric)
                           .where(EpochMetric.job_id == job.id))
    assert count == 1
    (row,) = repo.history(session, job_id=job.id)
    assert row.loss == 0.7
    assert row.wall_time == 0.1


def test_history_is_ordered_and_since_filters(session: Session) -> None:
    job = make_job(session)
    for epoch in (3, 1, 2, 4):
        store_epoch(session, job_id=job.id, epoch=epoch,
                          metrics={**METRICS, "loss": epoch / 10}, wall_time=epoch)
    rows = repo.history(session, job_id=job.id)
    assert [r.epoch for r in rows] == [1, 2, 3, 4]
    assert [r.loss for r in rows] == [0.1, 0.2, 0.3, 0.4]
    assert [r.epoch for r in repo.history(session, job_id=job.id, since=2)] == [3, 4]
    assert job.epochs_done == 4
    assert repo.history(session, job_id=make_job(session).id) == []


def test_record_epochs_advances_progress_never_backwards(session: Session) -> None:
    job = make_job(session)
    store_epoch(session, job_id=job.id, epoch=2, metrics=METRICS)
    assert job.epochs_done == 2
    store_epoch(session, job_id=job.id, epoch=1, metrics=METRICS)
    assert job.epochs_done == 2


def test_extra_metrics_and_extras_are_kept(session: Session) -> None:
    job = make_job(session)
    store_epoch(session, job_id=job.id, epoch=1,
                      metrics={**METRICS, "train_mode_val_loss": 0.8},
                      extras={"bn": {"1": {"running_mean": [0.1, 0.2]}}, "notes": ["x"]})
    (row,) = repo.history(session, job_id=job.id)
    assert row.extras == {"train_mode_val_loss": 0.8, "bn": {"1": {"running_mean": [0.1, 0.2]}},
                          "notes": ["x"]}
    assert row.val_accuracy == 0.56
    assert row.lr == 1e-3


def test_missing_metrics_are_null(session: Session) -> None:
    job = make_job(session)
    store_epoch(session, job_id=job.id, epoch=1, metrics={"loss": 0.5})
    (row,) = repo.history(session, job_id=job.id)
    assert row.val_loss is None
    assert row.extras is None
    assert row.wall_time is None


def test_truncate_after_drops_later_rows_and_sets_progress(session: Session) -> None:
    job = make_job(session)
    for epoch in range(1, 6):
        store_epoch(session, job_id=job.id, epoch=epoch, metrics=METRICS)
    assert repo.truncate_after(session, job_id=job.id, epoch=3) == 2
    assert [r.epoch for r in repo.history(session, job_id=job.id)] == [1, 2, 3]
    assert job.epochs_done == 3
    assert repo.truncate_after(session, job_id=job.id, epoch=3) == 0
