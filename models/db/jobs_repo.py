"""Jobs: creation, listing, and the state machine queued -> running -> terminal.

Every transition is a conditional UPDATE, so two workers (or a worker and the API) racing on
one job can never both win: the one whose UPDATE matched no row lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import false, func, or_, select, text, update
from sqlalchemy.orm import Session

from models.db._sql import forget
from models.db.paging import newest_first
from models.db.tables import ANONYMOUS, TERMINAL, Job, JobStatus, new_id, utcnow
from models.queueing import QUEUES


def create_job(
    session: Session, *, spec: dict[str, Any], name: str | None, epochs_total: int,
    queue: str = "cpu", dataset_id: str | None = None, warnings: list[str] | None = None,
    device: str | None = None, idempotency_key: str | None = None,
    request_hash: str | None = None, max_attempts: int = 3, job_id: str | None = None,
    experiment_id: str | None = None, variant: str | None = None, seed: int | None = None,
    child_index: int | None = None, stack_key: str | None = None, owner: str = ANONYMOUS,
) -> Job:
    """Add a queued job (flushed, not committed). `device` is the requested one until claimed.
    Experiment children also pass their id, experiment, variant, seed, index and stack key.
    `owner`: the API key's id that created it (what auth-off requests get: "anonymous").

    A duplicate (`owner`, `idempotency_key`) raises sqlalchemy.exc.IntegrityError at the
    flush; look it up first with find_by_idempotency_key and treat the race with a rollback
    and a re-read.
    """
    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {QUEUES}, not {queue!r}")
    job = Job(id=job_id or new_id(), experiment_id=experiment_id, variant=variant, seed=seed,
              child_index=child_index, stack_key=stack_key, spec=spec, name=name,
              epochs_total=epochs_total, queue=queue, dataset_id=dataset_id,
              warnings=list(warnings or []), device=device, idempotency_key=idempotency_key,
              request_hash=request_hash, max_attempts=max_attempts, status=JobStatus.queued,
              attempts=0, epochs_done=0, cancel_requested=False, owner=owner)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, *, job_id: str, owner: str | None = None) -> Job | None:
    """The job, or None; with `owner`, None too when someone else owns it."""
    job = session.get(Job, job_id)
    return job if job is not None and owner in (None, job.owner) else None


def find_by_idempotency_key(session: Session, *, idempotency_key: str,
                            owner: str = ANONYMOUS) -> Job | None:
    """The job `owner` created with this Idempotency-Key, or None (keys are per owner)."""
    return session.scalar(select(Job).where(Job.idempotency_key == idempotency_key,
                                            Job.owner == owner))


def lock_submissions(session: Session, *, owner: str) -> None:
    """Serialise `owner`'s submissions until the session's transaction ends, so that counting
    the active jobs and adding new ones is one step: without it two concurrent requests both
    count below the cap and both insert.

    PostgreSQL: a transaction-scoped advisory lock on the owner (other owners go on; the
    commit or rollback releases it). SQLite has one writer at a time anyway: a no-op UPDATE
    begins the write transaction now, before the count, rather than at the first INSERT; a
    second submitter waits in the busy timeout and then counts what the first committed.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": owner})
    else:
        session.execute(update(Job).where(false()).values(owner=Job.owner)
                        .execution_options(synchronize_session=False))


def count_active(session: Session, *, owner: str) -> int:
    """How many of `owner`'s jobs are queued or running (experiment children included)."""
    stmt = select(func.count()).select_from(Job).where(
        Job.owner == owner, Job.status.in_([JobStatus.queued, JobStatus.running]))
    return int(session.scalar(stmt) or 0)


def list_jobs(
    session: Session, *, status: JobStatus | str | None = None, limit: int = 50,
    cursor: str | None = None, experiment_id: str | None = None, owner: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first, and the cursor of the next page (None on the last).

    Keyset pagination on (created_at, id): stable while jobs are added. A malformed cursor
    raises InvalidCursor (a ValueError).
    """
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    if experiment_id is not None:
        stmt = stmt.where(Job.experiment_id == experiment_id)
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    return newest_first(session, stmt, Job, limit=limit, cursor=cursor)


def _update(session: Session, job_id: str, where: list[Any], **values: Any) -> bool:
    stmt = (update(Job).where(Job.id == job_id, *where)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False))
    matched: bool = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    forget(session, Job, job_id)
    return matched


def claim_job(
    session: Session, *, job_id: str, worker: str, device: str, lease_owner: str | None = None,
) -> bool:
    """Move a queued job to running for `worker`; False if it was not queued (someone has it).

    `worker` is the node name people see; `lease_owner` (default `worker`) identifies the one
    process and attempt allowed to write into the job. Sets started_at, heartbeat_at and the
    lease, clears a previous attempt's release request and error, and counts the attempt.
    """
    now = utcnow()
    return _update(session, job_id, [Job.status == JobStatus.queued],
                   status=JobStatus.running, worker=worker, lease_owner=lease_owner or worker,
                   device=device, started_at=now, heartbeat_at=now, attempts=Job.attempts + 1,
                   error=None, release_requested=False)


def heartbeat_many(session: Session, *, job_ids: Sequence[str], worker: str) -> set[str]:
    """Renew the leases `worker` holds among `job_ids` with one UPDATE; returns those renewed
    (a job missing from it is no longer running under `worker`: its lease is lost)."""
    now = utcnow()
    stmt = (update(Job).where(Job.id.in_(job_ids), Job.status == JobStatus.running,
                              Job.lease_owner == worker)
            .values(heartbeat_at=now, updated_at=now).returning(Job.id)
            .execution_options(synchronize_session=False))
    held = {row[0] for row in session.execute(stmt)}
    for job_id in job_ids:
        forget(session, Job, job_id)
    return held


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
    refund: bool = False, stale_before: datetime | None = None,
) -> JobStatus | None:
    """Give a running job back to the queue (worker shutdown, lost worker).

    Back to queued while attempts < max_attempts, else failed with `error` as the reason; a
    job whose cancel was requested becomes cancelled. `refund`: the attempt was not the job's
    fault (graceful shutdown), so it is not counted and the job always goes back to queued.
    `worker` (a lease owner) and `stale_before` (heartbeat older than that) narrow the match,
    so a reaper never releases a job whose worker renewed its lease meanwhile. Returns the new
    status, None if nothing matched.
    """
    where: list[Any] = [Job.status == JobStatus.running]
    if worker is not None:
        where.append(Job.lease_owner == worker)
    if stale_before is not None:
        where.append(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before))
    now = utcnow()
    gone = {"lease_owner": None, "release_requested": False}
    if _update(session, job_id, [*where, Job.cancel_requested.is_(True)],
               status=JobStatus.cancelled, finished_at=now, **gone):
        return JobStatus.cancelled
    if refund:
        # A running job was claimed at least once, so attempts stays >= 0.
        if _update(session, job_id, where, status=JobStatus.queued, heartbeat_at=None,
                   error=error, attempts=Job.attempts - 1, **gone):
            return JobStatus.queued
        return None
    if _update(session, job_id, [*where, Job.attempts < Job.max_attempts],
               status=JobStatus.queued, heartbeat_at=None, error=error, **gone):
        return JobStatus.queued
    if _update(session, job_id, where, status=JobStatus.failed, finished_at=now,
               error=error or "worker lost too many times", **gone):
        return JobStatus.failed
    return None


def request_release(session: Session, *, worker: str) -> list[str]:
    """Ask every job running on node `worker` to stop at its epoch end and go back to the
    queue (the node is shutting down). Returns their ids."""
    ids = list(session.scalars(select(Job.id).where(Job.status == JobStatus.running,
                                                     Job.worker == worker)))
    for job_id in ids:
        _update(session, job_id, [Job.status == JobStatus.running, Job.worker == worker],
                release_requested=True)
    return ids


def stop_flags_many(session: Session, *, job_ids: Sequence[str], lease_owner: str | None = None
                    ) -> dict[str, tuple[bool, bool, bool]]:
    """(cancel, release, lost) of each of several running jobs (a stack trained together),
    with one query; read once per epoch (or write interval) by their worker. `lost`: the job
    is gone, no longer running, or (with `lease_owner`) held by someone else."""
    rows = session.execute(select(Job.id, Job.cancel_requested, Job.release_requested,
                                  Job.status, Job.lease_owner).where(Job.id.in_(job_ids)))
    out = dict.fromkeys(job_ids, (False, False, True))  # gone: lost
    for job_id, cancel, release, status, owner in rows:
        cancelled = status == JobStatus.cancelled
        lost = status != JobStatus.running or (lease_owner is not None and owner != lease_owner)
        out[job_id] = (bool(cancel) or cancelled, bool(release), lost and not cancelled)
    return out


def held_by(session: Session, *, lease_prefix: str) -> list[Job]:
    """Running jobs whose lease owner starts with `lease_prefix` ("<node>/<pid>/": one process)."""
    stmt = select(Job).where(Job.status == JobStatus.running,
                             Job.lease_owner.startswith(lease_prefix, autoescape=True))
    return list(session.scalars(stmt))


def make_due(session: Session, *, job_id: str) -> bool:
    """Date a queued job's updated_at back a day, so the next reaper sweep (any worker's, or a
    new worker's at start) re-enqueues it at once. A worker that is shutting down uses this
    instead of sending the message itself, which its own consumer might take back."""
    stmt = (update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(updated_at=utcnow() - timedelta(days=1))
            .execution_options(synchronize_session=False))
    matched: bool = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    forget(session, Job, job_id)
    return matched


def touch_queued(session: Session, *, job_id: str, untouched_since: datetime | None = None
                 ) -> bool:
    """Bump a queued job's updated_at (it is being re-enqueued). False if it is no longer
    queued or, with `untouched_since`, was updated after that (another reaper got there)."""
    where: list[Any] = [Job.status == JobStatus.queued]
    if untouched_since is not None:
        where.append(Job.updated_at <= untouched_since)
    return _update(session, job_id, where)


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


def delete_job(session: Session, *, job_id: str) -> bool:
    """Delete a job with its epochs and checkpoints (ON DELETE CASCADE). True if found."""
    job = session.get(Job, job_id)
    if job is None:
        return False
    session.delete(job)
    session.flush()
    return True
