"""Writing epoch rows the way the worker does: through repo.record_epochs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from models.db import repository as repo


def store_epoch(session: Session, *, job_id: str, epoch: int,
                metrics: Mapping[str, float | None], wall_time: float | None = None,
                extras: Mapping[str, Any] | None = None) -> bool:
    """One epoch row through record_epochs; False when that epoch was already stored."""
    row = repo.EpochRow(job_id, epoch, metrics, wall_time, extras)
    return repo.record_epochs(session, rows=[row]) == 1
