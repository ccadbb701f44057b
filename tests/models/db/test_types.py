from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db.tables import EpochMetric, Job
from tests.models.db.helpers import make_job
from tests.support.epochs import store_epoch

VALUES = [math.nan, math.inf, -math.inf, 0.0, -1.5e-300, 1 / 3, None]


def test_nan_and_inf_round_trip_in_metric_columns(session: Session) -> None:
    job = make_job(session)
    for epoch, value in enumerate(VALUES, start=1):
        store_epoch(session, job_id=job.id, epoch=epoch,
                          metrics={"loss": value, "val_accuracy": value}, wall_time=value)
    session.flush()
    session.expire_all()
    rows = repo.history(session, job_id=job.id)
    assert len(rows) == len(VALUES)
    for row, value in zip(rows, VALUES, strict=True):
        for got in (row.loss, row.val_accuracy, row.wall_time):
            if value is None:
                assert got is None
            elif math.isnan(value):
                assert got is not None
                assert math.isnan(got)
            else:
                assert got == value


def test_metric_columns_stay_queryable_as_numbers(session: Session) -> None:
    job = make_job(session)
    for epoch, loss in enumerate([0.5, math.nan, 0.25], start=1):
        store_epoch(session, job_id=job.id, epoch=epoch, metrics={"loss": loss})
    session.flush()
    finite = session.scalars(select(EpochMetric.epoch).where(
        EpochMetric.job_id == job.id, EpochMetric.loss < 0.4)).all()
    assert finite == [3]
    raw = session.execute(text("SELECT loss FROM epoch_metric WHERE job_id = :j AND epoch = 2"),
                          {"j": job.id}).scalar()
    assert raw is not None  # NaN must never degrade to NULL in the database


def test_metrics_json_keeps_nonfinite_values(session: Session) -> None:
    job = make_job(session)
    repo.claim_job(session, job_id=job.id, worker="w", device="cpu")
    metrics = {"loss": math.nan, "val_loss": math.inf, "nested": [1.0, -math.inf], "ok": 0.5}
    repo.finish_job(session, job_id=job.id, status="failed", error="diverged at epoch 3",
                    final_metrics=metrics, best_metrics={"accuracy": 0.75}, best_epoch=2)
    session.flush()
    session.expire_all()
    got = repo.get_job(session, job_id=job.id)
    assert got is not None
    assert got.final_metrics is not None
    assert math.isnan(got.final_metrics["loss"])
    assert got.final_metrics["val_loss"] == math.inf
    assert got.final_metrics["nested"] == [1.0, -math.inf]
    assert got.final_metrics["ok"] == 0.5
    assert got.best_metrics == {"accuracy": 0.75}
    assert got.best_epoch == 2


def test_timestamps_come_back_aware_in_utc(session: Session) -> None:
    job = make_job(session)
    session.flush()
    session.expire_all()
    got = repo.get_job(session, job_id=job.id)
    assert got is not None
    assert got.created_at.tzinfo is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - got.created_at) < timedelta(minutes=1)


def test_other_time_zones_are_stored_as_the_same_instant(session: Session) -> None:
    job = make_job(session)
    plus2 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    job.heartbeat_at = plus2
    session.flush()
    session.expire_all()
    got = session.get(Job, job.id)
    assert got is not None
    assert got.heartbeat_at == plus2
    assert got.heartbeat_at.hour == 10
    assert got.heartbeat_at.tzinfo == UTC


def test_naive_datetimes_are_refused(session: Session) -> None:
    job = make_job(session)
    job.heartbeat_at = datetime(2030, 1, 1, 12, 0)
    with pytest.raises(StatementError, match="naive datetime"):
        session.flush()
