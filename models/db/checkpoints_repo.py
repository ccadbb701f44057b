"""Checkpoints: the best and the last safetensors blob of each job, stored in the database so
every API replica and worker can read them without a shared volume."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from models.db._sql import dialect_insert, forget
from models.db.tables import CHECKPOINT_KINDS, Checkpoint, utcnow


def put_checkpoint(
    session: Session, *, job_id: str, kind: str, epoch: int, content: bytes,
    metrics: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Insert or replace the job's `kind` ('best' | 'last') checkpoint; size and sha256 computed.

    Returns the row's metadata (content deferred).
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, not {kind!r}")
    values = {"epoch": epoch, "content": content, "size": len(content),
              "sha256": hashlib.sha256(content).hexdigest(),
              "metrics": dict(metrics) if metrics is not None else None, "created_at": utcnow()}
    stmt = dialect_insert(session, Checkpoint).values(job_id=job_id, kind=kind, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["job_id", "kind"], set_=values))
    forget(session, Checkpoint, (job_id, kind))
    row = session.get(Checkpoint, (job_id, kind))
    assert row is not None  # just written in this transaction
    return row


def get_checkpoint(
    session: Session, *, job_id: str, which: str | int | None = None, kind: str | None = None,
) -> Checkpoint | None:
    """The checkpoint with its content: `which` is 'best', 'last' or an epoch number (`kind`
    is an alias for the first two). None when the job keeps no such checkpoint."""
    which = kind if which is None else which
    if which is None:
        raise TypeError("get_checkpoint needs which= ('best' | 'last' | epoch)")
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).options(
        undefer(Checkpoint.content))
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        # Both kinds may hold the same epoch; they are the same weights then.
        stmt = stmt.where(Checkpoint.epoch == int(which)).order_by(Checkpoint.kind).limit(1)
    else:
        stmt = stmt.where(Checkpoint.kind == which)
    return session.scalar(stmt.execution_options(populate_existing=True))


def list_checkpoints(session: Session, *, job_id: str) -> list[Checkpoint]:
    """The job's checkpoints without their content ('best' before 'last')."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.kind)
    return list(session.scalars(stmt))
