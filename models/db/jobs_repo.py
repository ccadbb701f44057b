"""Jobs: creation, listing, and the state machine queued -> running -> terminal.

Every transition is a conditional UPDATE, so two workers (or a worker and the API) racing on
one job can never both win: the one whose UPDATE matched no row lost.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.db._sql import forget
from models.db.tables import QUEUES, TERMINAL, Job, JobStatus, utcnow


class InvalidCursor(ValueError):
    """A `cursor` that list_jobs did not produce."""


def create_job(
    session: Session, *, spec: dict[str, Any], name: str | None, epochs_total: int,
    queue: str = "cpu", dataset_id: str | None = None, warnings: list[str] | None = None,
    device: str | None = None, idempotency_key: str | None = None,
    request_hash: str | None = None, max_attempts: int = 3,
) -> Job:
    """Add a queued job (flushed, not committed). `device` is the requested one until claimed.

    A duplicate `idempotency_key` raises sqlalchemy.exc.IntegrityError at the flush; look it
    up first with find_by_idempotency_key and treat the race with a rollback and a re-read.
    """
    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {QUEUES}, not {queue!r}")
    job = Job(spec=spec, name=name, epochs_total=epochs_total, queue=queue, dataset_id=dataset_id,
              warnings=list(warnings or []), device=device, idempotency_key=idempotency_key,
              request_hash=request_hash, max_attempts=max_attempts, status=JobStatus.queued,
              attempts=0, epochs_done=0, cancel_requested=False)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str) -> Job | None:
    """The job, or None."""
    return session.get(Job, job_id)


def find_by_idempotency_key(session: Session, *, idempotency_key: str) -> Job | None:
    """The job created with this Idempotency-Key, or None."""
    return session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor: pass the next_cursor of the previous page") from exc
    if created.tzinfo is None:
        raise InvalidCursor("invalid cursor: pass the next_cursor of the previous page")
    return created, job_id


def list_jobs(
    session: Session, *, status: JobStatus | str | None = None, limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first, and the cursor of the next page (None on the last).

    Keyset pagination on (created_at, id): stable while jobs are added. A malformed cursor
    raises InvalidCursor (a ValueError).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    if cursor:
        created, job_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < created,
                              and_(Job.created_at == created, Job.id < job_id)))
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode_cursor(rows[-1])


def _update(session: Session, job_id: str, where: list[Any], **values: Any) -> bool:
    stmt = (update(Job).where(Job.id == job_id, *where)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False))
    matched = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    forget(session, Job, job_id)
    return matched


def claim_job(session: Session, *, job_id: str, worker: str, device: str) -> bool:
    """Move a queued job to running for `worker`; False if it was not queued (someone has it).

    Sets started_at, heartbeat_at, lease_owner and worker, and counts the attempt.
    """
    now = utcnow()
    return _update(session, job_id, [Job.status == JobStatus.queued],
                   status=JobStatus.running, worker=worker, lease_owner=worker, device=device,
                   started_at=now, heartbeat_at=now, attempts=Job.attempts + 1, error=None)


def heartbeat(session: Session, *, job_id: str, worker: str | None = None) -> bool:
    """Renew a running job's lease; False if it is no longer running (or not held by `worker`)."""
    where = [Job.status == JobStatus.running]
    if worker is not None:
        where.append(Job.lease_owner == worker)
    return _update(session, job_id, where, heartbeat_at=utcnow())


def update_progress(session: Session, *, job_id: str, epochs_done: int) -> bool:
    """Record that `epochs_done` epochs are complete (never moves backwards); also a heartbeat."""
    return _update(session, job_id, [Job.epochs_done <= epochs_done],
                   epochs_done=epochs_done, heartbeat_at=utcnow())


def finish_job(
    session: Session, *, job_id: str, status: JobStatus | str, error: str | None = None,
    final_metrics: dict[str, Any] | None = None, best_metrics: dict[str, Any] | None = None,
    best_epoch: int | None = None, worker: str | None = None,
) -> bool:
    """Move a running job to a terminal status; False if it was not running (or not `worker`'s).

    Metrics arguments left as None keep what is stored. The lease is released.
    """
    status = JobStatus(status)
    if status not in TERMINAL:
        raise ValueError(f"finish_job needs a terminal status, not {status!s}")
    where = [Job.status == JobStatus.running]
    if worker is not None:
        where.append(Job.lease_owner == worker)
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(),
                              "lease_owner": None}
    for key, value in (("final_metrics", final_metrics), ("best_metrics", best_metrics),
                       ("best_epoch", best_epoch)):
        if value is not None:
            values[key] = value
    return _update(session, job_id, where, **values)


def release_job(
    session: Session, *, job_id: str, worker: str | None = None, error: str | None = None,
) -> JobStatus | None:
    """Give a running job back to the queue (worker shutdown, lost lease).

    Back to queued while attempts < max_attempts, else failed with `error` as the reason; a
    job whose cancel was requested becomes cancelled. Returns the new status, None if the job
    was not running (or not held by `worker`).
    """
    where = [Job.status == JobStatus.running]
    if worker is not None:
        where.append(Job.lease_owner == worker)
    now = utcnow()
    if _update(session, job_id, [*where, Job.cancel_requested.is_(True)],
               status=JobStatus.cancelled, finished_at=now, lease_owner=None):
        return JobStatus.cancelled
    if _update(session, job_id, [*where, Job.attempts < Job.max_attempts],
               status=JobStatus.queued, lease_owner=None, heartbeat_at=None, error=error):
        return JobStatus.queued
    if _update(session, job_id, where, status=JobStatus.failed, finished_at=now,
               lease_owner=None, error=error or "worker lost too many times"):
        return JobStatus.failed
    return None


def stale_jobs(session: Session, *, older_than_s: float) -> list[Job]:
    """Running jobs whose heartbeat is older than `older_than_s` seconds (their worker died)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stmt = select(Job).where(Job.status == JobStatus.running,
                             or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
    return list(session.scalars(stmt.order_by(Job.created_at)))


def queued_jobs(session: Session, *, older_than_s: float = 0.0) -> list[Job]:
    """Queued jobs last touched more than `older_than_s` seconds ago, oldest first."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    stmt = select(Job).where(Job.status == JobStatus.queued, Job.updated_at <= cutoff)
    return list(session.scalars(stmt.order_by(Job.created_at)))


def request_cancel(session: Session, *, job_id: str) -> JobStatus | None:
    """Cancel: queued -> cancelled now; running -> cancel_requested (the worker stops within an
    epoch); terminal -> unchanged. Returns the job's status afterwards, None if no such job."""
    if _update(session, job_id, [Job.status == JobStatus.queued], status=JobStatus.cancelled,
               cancel_requested=True, finished_at=utcnow()):
        return JobStatus.cancelled
    _update(session, job_id, [Job.status == JobStatus.running], cancel_requested=True)
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return JobStatus(status) if status is not None else None


def is_cancel_requested(session: Session, *, job_id: str) -> bool:
    """True when the job should stop: cancel requested, cancelled, or the job is gone."""
    row = session.execute(select(Job.cancel_requested, Job.status)
                          .where(Job.id == job_id)).one_or_none()
    return row is None or bool(row[0]) or row[1] == JobStatus.cancelled


def delete_job(session: Session, *, job_id: str) -> bool:
    """Delete a job with its epochs and checkpoints (ON DELETE CASCADE). True if found."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    session.delete(job)
    session.flush()
    return True
