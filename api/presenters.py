"""Rows as the API shows them: a job as `JobOut`, epochs as metric payloads and series (NaN/inf
as null), a job's class names. Pure reads: no route, no request."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from api.schemas import JobOut
from models.db import repository as repo
from models.db.tables import Job

COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "wall_time")
PLOTTABLE = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
# Optional series the trainer leaves in each epoch's extras (record_train_mode_val).
EXTRA_SERIES = ("train_mode_val_loss", "train_mode_val_accuracy")


def finite(v: Any) -> float | None:
    """A metric as JSON can carry it: NaN/inf (a diverged epoch) become None."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def job_out(job: Job) -> JobOut:
    elapsed = None
    if job.started_at is not None:  # timestamps come back timezone-aware (UTC)
        end = job.finished_at or datetime.now(UTC)
        elapsed = round((end - job.started_at).total_seconds(), 3)
    return JobOut(
        id=job.id, name=job.name, status=str(job.status), queue=job.queue, device=job.device,
        worker=job.worker, epoch=job.epochs_done, epochs=job.epochs_total,
        attempts=job.attempts, cancel_requested=job.cancel_requested, error=job.error,
        warnings=job.warnings or [], final_metrics=job.final_metrics,
        best_metrics=job.best_metrics, best_epoch=job.best_epoch, dataset_id=job.dataset_id,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at, elapsed_s=elapsed, experiment_id=job.experiment_id,
        variant=job.variant, seed=job.seed, spec=job.spec,
    )


def status_payload(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "status": str(job.status), "epoch": job.epochs_done,
            "epochs": job.epochs_total, "error": job.error}


def epoch_payload(row: repo.StoredEpoch) -> dict[str, Any]:
    """One epoch's metrics as the history endpoint names them."""
    data: dict[str, Any] = {"job_id": row.job_id, "epoch": row.epoch}
    for col in COLUMNS:
        data[col] = finite(getattr(row, col))
    for name in EXTRA_SERIES:
        if (row.extras or {}).get(name) is not None:
            data[name] = finite(row.extras[name])  # type: ignore[index]
    return data


def series(rows: list[repo.StoredEpoch]) -> dict[str, list[Any]]:
    """Epoch rows as a job's history gives them (one list per metric)."""
    out: dict[str, list[Any]] = {"epoch": [r.epoch for r in rows]}
    for col in COLUMNS:
        out[col] = [finite(getattr(r, col)) for r in rows]
    for name in EXTRA_SERIES:
        values = [(r.extras or {}).get(name) for r in rows]
        if any(v is not None for v in values):
            out[name] = [finite(v) for v in values]
    return out


def class_names(session: Session, job: Job) -> list[str] | None:
    if job.dataset_id is None:
        return None  # generated data: class ids are the names
    dataset = repo.get_dataset(session, dataset_id=job.dataset_id)
    label = (job.spec.get("dataset") or {}).get("label_column")
    if dataset is None or (label is not None and label != dataset.label_column):
        return None  # the checkpoint's own class list is authoritative then
    return list(dataset.classes)
