"""Worker heartbeats: which nodes are alive and which queues they serve."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db._sql import dialect_insert, forget
from models.db.tables import WorkerHeartbeat, utcnow


def beat_worker(session: Session, *, name: str, queues: Sequence[str], device: str | None) -> None:
    """Record that worker `name` is alive now, consuming `queues` on `device` (upsert)."""
    values = {"queues": list(queues), "device": device, "last_seen_at": utcnow()}
    stmt = dialect_insert(session, WorkerHeartbeat).values(name=name, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))
    forget(session, WorkerHeartbeat, name)


def live_workers(
    session: Session, *, queue: str | None = None, within_s: float = 60.0,
) -> list[WorkerHeartbeat]:
    """Workers seen in the last `within_s` seconds (serving `queue`, if given), by name."""
    cutoff = utcnow() - timedelta(seconds=within_s)
    stmt = (select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at >= cutoff)
            .order_by(WorkerHeartbeat.name))
    rows = list(session.scalars(stmt))
    return [w for w in rows if queue is None or queue in (w.queues or [])]
