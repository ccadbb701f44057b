"""What `worker.train_job` does, free of Celery so tests can call it directly.

The message carries only the job id: everything else comes from the database, which is the
source of truth and the broker only a doorbell. The job is claimed with a conditional update,
so a second delivery does nothing; the claim takes a lease that a thread renews while the job
trains and that every epoch write checks (fencing), so a worker that lost the job writes
nothing more. A job that ran before resumes from its "last" checkpoint.
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from models.datasets import DatasetError, load_table
from models.db import repository as repo
from models.db.tables import JobStatus, utcnow
from models.devices import DeviceError, select_device
from models.spec import JobSpec, Limits, ResolvedJob, SpecError, UploadedDataset, resolve_job
from models.trainer import TrainingDiverged, train_job
from worker.callbacks import DbCallbacks, LeaseLost
from worker.db import retrying
from worker.lease import LeaseKeeper, lease_owner_id

log = logging.getLogger(__name__)

# Failures whose message is already written for the user.
_READABLE = (SpecError, DatasetError, DeviceError)

@dataclass(frozen=True)
class RunContext:
    sessions: sessionmaker[Session]
    worker: str  # node name, shown as job.worker
    limits: Limits
    checkpoint_every: int = 1
    checkpoint_small_params: int = 1_000_000
    checkpoint_interval: float = 60.0
    heartbeat_interval: float = 5.0
    lease_timeout: float = 60.0
    db_retry: float = 120.0
    # Set in this process when its worker shuts down (solo pool: the task runs right here).
    stopping: threading.Event | None = None


def failure_reason(exc: BaseException) -> str:
    """A message a person can act on; never a traceback."""
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else ""
    if isinstance(exc, _READABLE):
        return text or type(exc).__name__
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of memory on the GPU: use a smaller batch_size or network, or device "
                f"'cpu' ({first_line or 'CUDA out of memory'})")
    if isinstance(exc, MemoryError):
        return ("out of memory on the worker: use a smaller dataset, batch_size or network"
                + (f" ({first_line})" if first_line else ""))
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def diverged_reason(exc: TrainingDiverged, last_checkpoint: int | None) -> str:
    kept = (f"the last good checkpoint (epoch {last_checkpoint}) is kept"
            if last_checkpoint else "no checkpoint was written before it")
    loss = str(exc.loss).lower()
    return (f"training diverged: loss is {loss} at epoch {exc.epoch}; {kept}; lower the "
            "learning rate, scale the inputs or add normalisation")


def run_job(job_id: str, ctx: RunContext) -> str | None:
    """Claim, train and finish one job; returns its final status ("queued" when released
    for another worker), or None if not claimed (or the lease was lost).

    Once claimed, the job never stays `running` past an exception seen here.
    """
    with ctx.sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        stored_spec = job.spec
    # The device is chosen (CUDA first touched) inside the task, before the claim, so the
    # claim records it; a bad device request still claims the job and then fails it.
    device: torch.device | None = None
    early_error: Exception | None = None
    device_name = "unknown"
    try:
        spec = JobSpec.model_validate(stored_spec)
        device_name = spec.device
        device = select_device(spec.device)
        device_name = str(device)
    except Exception as exc:
        early_error = exc
    if ctx.stopping is not None and ctx.stopping.is_set():
        # Delivered while this worker shuts down: leave it to the next worker's reaper.
        log.info("job %s delivered during shutdown; leaving it queued for another worker",
                 job_id)
        with ctx.sessions.begin() as session:
            repo.make_due(session, job_id=job_id)
        return None
    owner = lease_owner_id(ctx.worker)
    resume = retrying(lambda: _claim(job_id, ctx, owner, device_name),
                      what=f"job {job_id} claim", deadline_s=ctx.db_retry)
    if resume is None:
        _explain_unclaimed(job_id, ctx)
        return None
    log.info("job %s claimed by %s on %s", job_id, owner, device_name)
    keeper = LeaseKeeper(ctx.sessions, job_id, owner, ctx.heartbeat_interval)
    keeper.start()
    try:
        if early_error is not None:
            raise early_error
        assert device is not None
        return _train(job_id, spec, device, ctx, owner, keeper.lost, resume)
    except LeaseLost:
        log.warning("job %s: %s no longer holds its lease; stopped without writing more",
                    job_id, owner)
        return None
    except Exception as exc:
        reason = failure_reason(exc)
        if isinstance(exc, TrainingDiverged):
            reason = diverged_reason(exc, _last_checkpoint_epoch(ctx, job_id))
        log.warning("job %s failed: %s", job_id, reason,
                    exc_info=not isinstance(exc, (*_READABLE, TrainingDiverged)))
        _finish(ctx, job_id, owner, status="failed", error=reason)
        return "failed"
    except BaseException as exc:
        # The worker is being stopped hard (cold shutdown, interrupt): not the job's fault, so
        # it goes back to the queue (or fails once its attempts are spent), and the process ends.
        # Retried like every other write here: on SQLite a WAL snapshot conflict answers
        # "database is locked" at once, without waiting for the busy timeout.
        reason = f"worker stopped ({type(exc).__name__})"
        # The interrupt may have landed mid-write: the frames it unwound still reference that
        # session's connection, whose write lock would block the release below until it gives
        # up. Dropping the frames' locals lets the connection be finalised (rolled back) now.
        traceback.clear_frames(exc.__traceback__)
        gc.collect()

        def release() -> JobStatus | None:
            with ctx.sessions.begin() as session:
                status = repo.release_job(session, job_id=job_id, worker=owner, error=reason)
                repo.make_due(session, job_id=job_id)
                return status
        new_status = retrying(release, what=f"job {job_id} release", deadline_s=ctx.db_retry)
        log.warning("job %s released (%s) after %s", job_id, new_status, type(exc).__name__)
        raise
    finally:
        keeper.stop()


Resume = tuple[int, bytes | None]  # (epoch the checkpoint ends at, its "last" blob)


def _claim(job_id: str, ctx: RunContext, owner: str, device: str) -> Resume | None:
    """Claim the job and prepare its resume in one transaction: (start epoch, "last" blob),
    or None if it was not claimed. Epoch rows after the checkpoint (written by a lost attempt
    that checkpointed less often) are deleted, so the history stays exactly 1..N."""
    with ctx.sessions.begin() as session:
        if not repo.claim_job(session, job_id=job_id, worker=ctx.worker, device=device,
                              lease_owner=owner):
            return None
        last = repo.get_checkpoint(session, job_id=job_id, kind="last")
        epoch = last.epoch if last is not None else 0
        dropped = repo.truncate_after(session, job_id=job_id, epoch=epoch)
        if last is None:
            return 0, None
        log.info("resuming job %s from epoch %d", job_id, epoch)
        if dropped:
            log.info("job %s: dropped %d epoch rows after the checkpoint", job_id, dropped)
        return epoch, bytes(last.content)


def _explain_unclaimed(job_id: str, ctx: RunContext) -> None:
    with ctx.sessions() as session:
        job = repo.get_job(session, job_id=job_id)
        live_since = utcnow() - timedelta(seconds=ctx.lease_timeout)
        if job is not None and job.status == JobStatus.running and job.heartbeat_at is not None \
                and job.heartbeat_at >= live_since:
            log.info("job %s is running under %s (lease live); ignoring duplicate delivery",
                     job_id, job.lease_owner)
        else:
            status = job.status if job is not None else "gone"
            log.info("job %s already claimed or not queued (%s); nothing to do", job_id, status)


def _load(spec: JobSpec, ctx: RunContext) -> tuple[ResolvedJob, Any]:
    content: bytes | None = None
    if isinstance(spec.dataset, UploadedDataset):
        dataset_id = spec.dataset.id
        with ctx.sessions() as session:
            content = repo.get_dataset_content(session, dataset_id=dataset_id)
        if content is None:
            raise DatasetError(f"dataset {dataset_id} no longer exists (it was deleted): "
                               "upload it again and submit a new job")
    table = load_table(spec.dataset, csv_content=content)
    resolved = resolve_job(spec, n_features=table.n_features, n_classes=table.n_classes,
                           n_rows=table.n_rows, limits=ctx.limits)
    return resolved, table


def checkpoint_interval(resolved: ResolvedJob, ctx: RunContext) -> float | None:
    """Seconds between "last" checkpoints for this job: None (every checkpoint_every epochs)
    for small networks, time-bounded for large ones."""
    params = sum(row.params for row in resolved.network.summary())
    return ctx.checkpoint_interval if params > ctx.checkpoint_small_params else None


def _train(job_id: str, spec: JobSpec, device: torch.device, ctx: RunContext, owner: str,
           lost: threading.Event, resume: Resume) -> str | None:
    resolved, table = _load(spec, ctx)
    callbacks = DbCallbacks(ctx.sessions, job_id, lease_owner=owner, lost=lost,
                            stopping=ctx.stopping, retry_s=ctx.db_retry)
    result = train_job(resolved, table, device=device, callbacks=callbacks,
                       resume_from=resume[1], checkpoint_every=ctx.checkpoint_every,
                       checkpoint_interval_s=checkpoint_interval(resolved, ctx))
    reason = callbacks.stop_reason if result.cancelled else None
    if reason == "lost":
        log.warning("job %s: %s lost its lease; stopped without finishing it", job_id, owner)
        return None
    done = result.epochs_run >= spec.training.epochs
    if reason == "release" and not done:
        # This process's worker is shutting down (a pool child learns it here).
        if ctx.stopping is not None:
            ctx.stopping.set()
        new_status = retrying(lambda: _release(ctx, job_id, owner),
                              what=f"job {job_id} release", deadline_s=ctx.db_retry)
        log.warning("job %s released at epoch %d for another worker (worker shutting down; "
                    "attempt not counted): %s", job_id, result.epochs_run, new_status)
        return str(new_status) if new_status is not None else None
    status = "cancelled" if reason == "cancel" else "succeeded"
    if not _finish(ctx, job_id, owner, status=status, final_metrics=result.final_metrics,
                   best_metrics=result.best_metrics, best_epoch=result.best_epoch):
        log.warning("job %s was no longer running under %s; result not recorded",
                    job_id, owner)
        return None
    log.info("job %s %s", job_id, status)
    return status


def _release(ctx: RunContext, job_id: str, owner: str) -> JobStatus | None:
    """Back to queued, attempt refunded, due for the next reaper sweep. No message is sent
    from here: this worker's consumer is still running and could take it back itself."""
    with ctx.sessions.begin() as session:
        status = repo.release_job(session, job_id=job_id, worker=owner, refund=True)
        repo.make_due(session, job_id=job_id)
        return status


def _finish(ctx: RunContext, job_id: str, owner: str, **values: Any) -> bool:
    def finish() -> bool:
        with ctx.sessions.begin() as session:
            return repo.finish_job(session, job_id=job_id, worker=owner, **values)
    return retrying(finish, what=f"job {job_id} finish", deadline_s=ctx.db_retry)


def _last_checkpoint_epoch(ctx: RunContext, job_id: str) -> int | None:
    with ctx.sessions() as session:
        rows = {c.kind: c.epoch for c in repo.list_checkpoints(session, job_id=job_id)}
    return rows.get("last")
