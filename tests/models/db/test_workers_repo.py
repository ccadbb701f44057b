from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.db import repository as repo
from models.db.tables import WorkerHeartbeat, utcnow


def test_beat_worker_upserts(session: Session) -> None:
    repo.beat_worker(session, name="gpu@a", queues=["gpu"], device="cpu")
    repo.beat_worker(session, name="gpu@a", queues=["gpu"], device="cuda")
    rows = [w for w in repo.live_workers(session) if w.name == "gpu@a"]
    assert len(rows) == 1
    assert rows[0].device == "cuda"
    assert rows[0].queues == ["gpu"]


def test_live_workers_by_queue_and_age(session: Session) -> None:
    repo.beat_worker(session, name="cpu@a", queues=["cpu"], device="cpu")
    repo.beat_worker(session, name="gpu@b", queues=["gpu", "cpu"], device="cuda")
    repo.beat_worker(session, name="gpu@old", queues=["gpu"], device="cuda")
    session.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.name == "gpu@old")
                    .values(last_seen_at=utcnow() - timedelta(minutes=10)))
    gpu = {w.name for w in repo.live_workers(session, queue="gpu", within_s=60)}
    assert "gpu@b" in gpu
    assert "gpu@old" not in gpu
    assert "cpu@a" not in gpu
    cpu = {w.name for w in repo.live_workers(session, queue="cpu")}
    assert {"cpu@a", "gpu@b"} <= cpu
    assert "gpu@old" in {w.name for w in repo.live_workers(session, within_s=3600)}
