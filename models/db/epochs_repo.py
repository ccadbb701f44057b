"""Per-epoch metrics: one row per (job, epoch), written so that a replay changes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from models.db._sql import dialect_insert, forget
from models.db.tables import EpochMetric, Job, utcnow

METRIC_COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")


@dataclass(frozen=True)
class EpochRow:
    """One job's epoch, as record_epochs takes it."""

    job_id: str
    epoch: int
    metrics: Mapping[str, float | None]
    wall_time: float | None = None
    extras: Mapping[str, Any] | None = None


def record_epoch(
    session: Session, *, job_id: str, epoch: int, metrics: Mapping[str, float | None],
    wall_time: float | None = None, extras: Mapping[str, Any] | None = None,
) -> bool:
    """Store epoch `epoch` (1-based) of a job; False when that epoch was already stored.

    Known metrics go to their columns; any other metric key (e.g. train_mode_val_loss) is kept
    in `extras` under its own name. Also advances job.epochs_done (never backwards).
    """
    values: dict[str, Any] = {k: metrics.get(k) for k in METRIC_COLUMNS}
    rest = {k: v for k, v in metrics.items() if k not in METRIC_COLUMNS}
    merged = {**rest, **(extras or {})}
    stmt = dialect_insert(session, EpochMetric).values(
        job_id=job_id, epoch=epoch, wall_time=wall_time, extras=merged or None,
        created_at=utcnow(), **values,
    ).on_conflict_do_nothing(index_elements=["job_id", "epoch"]).returning(EpochMetric.epoch)
    # RETURNING yields nothing when the row existed (rowcount is unreliable across drivers).
    inserted = session.execute(stmt).first() is not None
    session.execute(update(Job).where(Job.id == job_id, Job.epochs_done < epoch)
                    .values(epochs_done=epoch, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    forget(session, Job, job_id)
    return inserted


def record_epochs(session: Session, *, rows: Sequence[EpochRow]) -> int:
    """record_epoch for many (job, epoch) rows at once (a stack's epoch): one INSERT, and one
    epochs_done UPDATE per distinct epoch. Rows already stored are left alone; returns how many
    were new."""
    if not rows:
        return 0
    values = []
    for r in rows:
        known = {k: r.metrics.get(k) for k in METRIC_COLUMNS}
        rest = {k: v for k, v in r.metrics.items() if k not in METRIC_COLUMNS}
        merged = {**rest, **(r.extras or {})}
        values.append({"job_id": r.job_id, "epoch": r.epoch, "wall_time": r.wall_time,
                       "extras": merged or None, "created_at": utcnow(), **known})
    stmt = (dialect_insert(session, EpochMetric).values(values)
            .on_conflict_do_nothing(index_elements=["job_id", "epoch"])
            .returning(EpochMetric.job_id))
    inserted = len(session.execute(stmt).all())
    by_epoch: dict[int, list[str]] = {}
    for r in rows:
        by_epoch.setdefault(r.epoch, []).append(r.job_id)
    for epoch, job_ids in by_epoch.items():
        session.execute(update(Job).where(Job.id.in_(job_ids), Job.epochs_done < epoch)
                        .values(epochs_done=epoch, updated_at=utcnow())
                        .execution_options(synchronize_session=False))
        for job_id in job_ids:
            forget(session, Job, job_id)
    return inserted


def history(session: Session, *, job_id: str, since: int = 0) -> list[EpochMetric]:
    """The job's epoch rows with epoch > `since`, in epoch order."""
    stmt = (select(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch > since)
            .order_by(EpochMetric.epoch))
    return list(session.scalars(stmt))


def latest_epoch(session: Session, *, job_id: str) -> int:
    """The highest stored epoch of the job, 0 when none."""
    value = session.scalar(select(func.max(EpochMetric.epoch))
                           .where(EpochMetric.job_id == job_id))
    return int(value or 0)


def truncate_after(session: Session, *, job_id: str, epoch: int) -> int:
    """Delete the job's epoch rows after `epoch` and set epochs_done to `epoch`: a resumed job
    continues from its checkpoint, so rows a lost attempt wrote past it would be replaced.
    Returns how many rows went."""
    gone = session.execute(delete(EpochMetric).where(EpochMetric.job_id == job_id,
                                                     EpochMetric.epoch > epoch)
                           .execution_options(synchronize_session=False)).rowcount  # type: ignore[attr-defined]
    session.execute(update(Job).where(Job.id == job_id)
                    .values(epochs_done=epoch, updated_at=utcnow())
                    .execution_options(synchronize_session=False))
    forget(session, Job, job_id)
    return int(gone or 0)
