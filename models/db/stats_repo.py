"""Aggregates for monitoring (GET /metrics): job counts and recent training throughput.

Both are read at scrape time and stay cheap as the tables grow: the counts are an index-only
scan of ix_job_status_*, and the epoch count touches only the newest epoch rows of the jobs
that trained in the window.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from models.db.tables import TERMINAL, EpochMetric, Job, JobStatus


def job_counts(session: Session) -> dict[str, int]:
    """Jobs per status, every status present (0 where none)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    counts = {str(status): 0 for status in JobStatus}
    counts.update({str(status): int(n) for status, n in rows})
    return counts


def epochs_since(session: Session, *, since: datetime, lease_timeout: timedelta) -> int:
    """Epochs whose rows were written at or after `since`, by jobs running now or finished
    since then.

    A job's history is exactly epochs 1..N, written in order, so its epochs in the window are
    its last epoch minus the last one written before `since`: two backward index probes per
    job, however long its history. A job that finished in the window renewed its lease less
    than `lease_timeout` before it finished (else it would have been reaped), which lets
    ix_job_status_heartbeat_at find it. Not counted: epochs of a job released back to the
    queue (worker shutdown or loss) during the window.
    """
    running = select(Job.id).where(Job.status == JobStatus.running)
    finished = select(Job.id).where(Job.status.in_(TERMINAL),
                                    Job.heartbeat_at >= since - lease_timeout,
                                    Job.finished_at >= since)
    jobs = union_all(running, finished).subquery()
    em = EpochMetric
    last = select(func.max(em.epoch)).where(em.job_id == jobs.c.id).scalar_subquery()
    before = (select(em.epoch).where(em.job_id == jobs.c.id, em.created_at < since)
              .order_by(em.epoch.desc()).limit(1).scalar_subquery())
    per_job = func.coalesce(last, 0) - func.coalesce(before, 0)
    return int(session.scalar(select(func.coalesce(func.sum(per_job), 0)).select_from(jobs))
               or 0)
